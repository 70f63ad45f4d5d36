/**
 * The request bodies of /v1/chat/completions and /v1/completions as OpenAI (and vLLM's
 * extensions) define them. Unknown fields are dropped, as OpenAI does; what we parse but
 * cannot serve (suffix, best_of > 1) is refused with a message naming the field.
 */
import { z } from "zod";
import { ApiError } from "./errors.ts";

const nonNegativeInt = z.number().int().min(0);

const unsupportedAbove = (max: number, what: string) =>
  z
    .number()
    .int()
    .min(1)
    .refine((v) => v <= max, { message: `${what} is not supported: only ${max} choice per request` });

/** Choices per request: each is a request of its own on the workers, so a few, not thousands. */
export const MAX_CHOICES = 128;

/** Fields shared by both endpoints: sampling, stopping and vLLM's extras. */
const generationFields = {
  model: z.string().min(1),
  stream: z.boolean().nullish(),
  stream_options: z.object({ include_usage: z.boolean().nullish() }).nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(4, { message: "at most 4 stop strings" })]).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  n: z.number().int().min(1).max(MAX_CHOICES).nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  // vLLM's extra sampling parameters.
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  repetition_penalty: z.number().gt(0).max(2).nullish(),
  min_tokens: nonNegativeInt.nullish(),
  stop_token_ids: z.array(nonNegativeInt).nullish(),
  ignore_eos: z.boolean().nullish(),
  skip_special_tokens: z.boolean().nullish(),
  return_tokens_as_token_ids: z.boolean().nullish(),
  user: z.string().nullish(),
  // Parsed to be refused rather than dropped: ignoring them would answer something else than
  // what was asked (free text for a JSON mode, unbiased sampling for a bias).
  response_format: z
    .object({ type: z.string() })
    .refine((format) => format.type === "text", {
      message: "only response_format {\"type\": \"text\"} is supported: JSON modes need guided decoding, which Switchyard does not do yet",
    })
    .nullish(),
  logit_bias: z
    .record(z.string(), z.number())
    .refine((bias) => Object.keys(bias).length === 0, { message: "logit_bias is not supported yet (an empty object is accepted)" })
    .nullish(),
};

const TextPartSchema = z.object({
  type: z.literal("text", { error: "only text content parts are supported" }),
  text: z.string(),
});

const MessageSchema = z.object({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(TextPartSchema)]).nullish(),
  name: z.string().nullish(),
  tool_call_id: z.string().nullish(),
  tool_calls: z.array(z.unknown()).nullish(),
  reasoning_content: z.string().nullish(),
}).refine((message) => message.content != null || (message.role === "assistant" && message.tool_calls != null), {
  // OpenAI: only an assistant message that carries tool calls may go without content.
  message: "content is required for this message",
  path: ["content"],
});

/** A function the model may call, as OpenAI describes one (`parameters` is a JSON Schema). */
const ToolSchema = z.object({
  type: z.literal("function", { error: "only function tools are supported" }),
  function: z.object({
    name: z.string().min(1),
    description: z.string().nullish(),
    parameters: z.record(z.string(), z.unknown()).nullish(),
    strict: z.boolean().nullish(),
  }),
});

export const ChatCompletionRequestSchema = z
  .object({
    ...generationFields,
    messages: z.array(MessageSchema).min(1, { message: "at least one message is required" }),
    max_completion_tokens: z.number().int().min(1).nullish(),
    logprobs: z.boolean().nullish(),
    top_logprobs: z.number().int().min(0).max(20).nullish(),
    // vLLM: extra variables for the chat template, e.g. {"enable_thinking": false} for Qwen3.
    chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
    tools: z.array(ToolSchema).nullish(),
    tool_choice: z
      .union([z.enum(["none", "auto", "required"]), z.object({ type: z.literal("function"), function: z.object({ name: z.string().min(1) }) })])
      .nullish(),
    parallel_tool_calls: z.boolean().nullish(),
  })
  .refine((body) => body.top_logprobs == null || body.logprobs === true, {
    message: "top_logprobs requires logprobs to be true",
    path: ["top_logprobs"],
  });

/**
 * `prompt`: one text or token-id sequence, or a batch of them, in any of the shapes OpenAI
 * accepts; always a list of prompts after parsing.
 */
const PromptSchema = z
  .union([z.string(), z.array(z.string()), z.array(nonNegativeInt), z.array(z.array(nonNegativeInt))])
  .transform((prompt, ctx): (string | number[])[] => {
    if (typeof prompt === "string") return [prompt];
    if (prompt.length === 0) {
      ctx.issues.push({ code: "custom", message: "prompt must not be empty", input: prompt });
      return z.NEVER;
    }
    if (typeof prompt[0] === "number") return [prompt as number[]];
    const prompts = prompt as (string | number[])[];
    if (prompts.some((p) => typeof p !== "string" && p.length === 0)) {
      ctx.issues.push({ code: "custom", message: "prompt must not be empty", input: prompt });
      return z.NEVER;
    }
    return prompts;
  });

export const CompletionRequestSchema = z
  .object({
    ...generationFields,
    prompt: PromptSchema,
    echo: z.boolean().nullish(),
    logprobs: z.number().int().min(0).max(20).nullish(),
    best_of: unsupportedAbove(1, "best_of > 1").nullish(),
    suffix: z.null({ error: "suffix is not supported" }).optional(),
  })
  .refine((body) => body.prompt.length * (body.n ?? 1) <= MAX_CHOICES, {
    message: `at most ${MAX_CHOICES} choices per request (prompts times n)`,
    path: ["prompt"],
  });

export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>;
export type ChatMessage = ChatCompletionRequest["messages"][number];
export type CompletionRequest = z.infer<typeof CompletionRequestSchema>;

/** Validates a parsed JSON body; a failure is a 400 whose message names the field. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  const result = schema.safeParse(body);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const param = formatPath(issue.path);
  const message = param ? `${param}: ${issue.message}` : issue.message;
  const more = result.error.issues.length > 1 ? ` (and ${result.error.issues.length - 1} more problem(s))` : "";
  throw ApiError.badRequest(message + more, param || null);
}

function formatPath(path: PropertyKey[]): string {
  let out = "";
  for (const part of path) {
    if (typeof part === "number") out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out;
}
