/**
 * Renders a chat into the prompt text the model was trained on, with the Jinja template from
 * the model's tokenizer_config.json (or chat_template.jinja), as transformers'
 * apply_chat_template does: messages, tools, add_generation_prompt, the special tokens, plus
 * the request's chat_template_kwargs.
 */
import { Template } from "@huggingface/jinja";
import { ApiError } from "./errors.ts";
import type { ChatMessage } from "./openai_schemas.ts";
import type { ModelTokenizer } from "./tokenizer.ts";

export interface TemplateMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

const compiled = new WeakMap<ModelTokenizer, Template>();

function templateOf(tokenizer: ModelTokenizer, model: string): Template {
  let template = compiled.get(tokenizer);
  if (template !== undefined) return template;
  if (tokenizer.chatTemplate === undefined) {
    throw ApiError.badRequest(`model '${model}' has no chat template; use /v1/completions with a prompt instead`, "messages", "no_chat_template");
  }
  try {
    template = new Template(tokenizer.chatTemplate);
  } catch (err) {
    throw new Error(`the chat template of model '${model}' does not parse: ${(err as Error).message}`, { cause: err });
  }
  compiled.set(tokenizer, template);
  return template;
}

/** OpenAI messages to what templates expect: content as one string; `developer` is `system`. */
export function toTemplateMessages(messages: ChatMessage[]): TemplateMessage[] {
  return messages.map((m) => {
    const content = typeof m.content === "string" ? m.content : m.content ? m.content.map((p) => p.text).join("\n") : "";
    const out: TemplateMessage = { role: m.role === "developer" ? "system" : m.role, content };
    if (m.name != null) out.name = m.name;
    if (m.tool_call_id != null) out.tool_call_id = m.tool_call_id;
    if (m.tool_calls != null) out.tool_calls = m.tool_calls;
    if (m.reasoning_content != null) out.reasoning_content = m.reasoning_content;
    return out;
  });
}

export function renderChatPrompt(
  tokenizer: ModelTokenizer,
  model: string,
  messages: ChatMessage[],
  templateKwargs: Record<string, unknown> = {},
  tools: readonly unknown[] = [],
): string {
  const template = templateOf(tokenizer, model);
  try {
    return template.render({
      ...templateKwargs,
      // Templates test `if tools`: an empty list must not read as tools offered.
      ...(tools.length > 0 ? { tools } : {}),
      messages: toTemplateMessages(messages),
      add_generation_prompt: true,
      bos_token: tokenizer.bosToken ?? "",
      eos_token: tokenizer.eosToken ?? "",
    });
  } catch (err) {
    // Includes the template's own raise_exception("..."), its way to refuse a conversation.
    throw ApiError.badRequest(`cannot format these messages with the model's chat template: ${(err as Error).message}`, "messages");
  }
}

/**
 * The token ids a chat is sent to the model as: the rendered prompt, encoded without adding
 * special tokens, since the template already wrote those the model expects. The chat endpoint
 * and /tokenize both use it, so the two cannot disagree.
 */
export function encodeChatPrompt(
  tokenizer: ModelTokenizer,
  model: string,
  messages: ChatMessage[],
  templateKwargs: Record<string, unknown> = {},
  tools: readonly unknown[] = [],
  addSpecialTokens = false,
): number[] {
  return tokenizer.encode(renderChatPrompt(tokenizer, model, messages, templateKwargs, tools), addSpecialTokens);
}
