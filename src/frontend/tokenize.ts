/**
 * vLLM's `POST /tokenize` and `POST /detokenize`: the model's tokenizer (and chat template) as a
 * service, so that a client can count or inspect tokens exactly as a generation request would.
 */
import { z } from "zod";
import { encodeChatPrompt } from "./chat_template.ts";
import { ApiError } from "./errors.ts";
import { findModel } from "./models.ts";
import { ChatCompletionRequestSchema, parseBody } from "./openai_schemas.ts";
import type { Router } from "../router/router.ts";
import { tokenizerFor } from "./tokenizer.ts";

const chatShape = ChatCompletionRequestSchema.shape;

const TokenizeRequestSchema = z
  .object({
    model: z.string().min(1),
    prompt: z.string().nullish(),
    messages: chatShape.messages.nullish(),
    tools: chatShape.tools,
    chat_template_kwargs: chatShape.chat_template_kwargs,
    add_special_tokens: z.boolean().nullish(),
    return_token_strs: z.boolean().nullish(),
  })
  .refine((body) => (body.prompt != null) !== (body.messages != null), {
    message: "give either prompt (a text) or messages (a chat), not both",
    path: ["prompt"],
  });

const DetokenizeRequestSchema = z.object({
  model: z.string().min(1),
  tokens: z.array(z.number().int().min(0)),
});

/** The token ids a prompt (text as /v1/completions reads it, or messages as the chat endpoint renders them) becomes. */
export function tokenizeJson(router: Router, raw: unknown): string {
  const body = parseBody(TokenizeRequestSchema, raw);
  const card = findModel(router, body.model);
  const tokenizer = tokenizerFor(card.path);
  let tokens: number[];
  if (body.prompt != null) {
    tokens = tokenizer.encode(body.prompt, body.add_special_tokens ?? true);
  } else {
    tokens = encodeChatPrompt(tokenizer, card.name, body.messages!, body.chat_template_kwargs ?? {}, body.tools ?? [], body.add_special_tokens ?? false);
  }
  const out: Record<string, unknown> = { count: tokens.length, max_model_len: card.maxModelLen, tokens };
  if (body.return_token_strs) out.token_strs = tokens.map((id) => tokenizer.vocabEntry(id) ?? "");
  return JSON.stringify(out);
}

/** The text of token ids, special tokens included. */
export function detokenizeJson(router: Router, raw: unknown): string {
  const body = parseBody(DetokenizeRequestSchema, raw);
  const card = findModel(router, body.model);
  const tokenizer = tokenizerFor(card.path);
  const outside = body.tokens.find((id) => id >= tokenizer.vocabSize);
  if (outside !== undefined) throw ApiError.badRequest(`tokens: id ${outside} is outside the vocabulary [0, ${tokenizer.vocabSize})`, "tokens");
  return JSON.stringify({ prompt: tokenizer.decode(body.tokens, false) });
}
