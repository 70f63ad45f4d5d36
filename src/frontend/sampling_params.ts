/**
 * From an OpenAI request body to the worker's SamplingParams, including the one rule that
 * needs the prompt: max_tokens defaults to the room left in the context, and a request that
 * does not fit the context is refused here rather than by a worker.
 */
import { create } from "@bufbuild/protobuf";
import { SamplingParamsSchema, type SamplingParams } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { ApiError } from "./errors.ts";

/** The sampling fields both endpoints share, as parsed by openai_schemas.ts. */
export interface SamplingFields {
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  repetition_penalty?: number | null;
  min_tokens?: number | null;
  stop_token_ids?: number[] | null;
  ignore_eos?: boolean | null;
}

export interface SamplingContext {
  promptTokens: number;
  maxModelLen: number;
  /** Token ids that end generation unless ignore_eos (the model's eos). */
  eosTokenIds: readonly number[];
  /** max_tokens or max_completion_tokens, whichever the endpoint reads. */
  maxTokens: number | undefined;
  /** Top alternatives per token; undefined asks for no logprobs. */
  logprobs: number | undefined;
}

export function buildSamplingParams(body: SamplingFields, context: SamplingContext): SamplingParams {
  const { promptTokens, maxModelLen } = context;
  const room = maxModelLen - promptTokens;
  if (room <= 0) {
    throw ApiError.badRequest(
      `This model's maximum context length is ${maxModelLen} tokens, and the prompt has ${promptTokens} tokens, which leaves no room for a completion. Shorten the prompt.`,
      null,
      "context_length_exceeded",
    );
  }
  if (context.maxTokens !== undefined && context.maxTokens > room) {
    throw ApiError.badRequest(
      `This model's maximum context length is ${maxModelLen} tokens. However, you requested ${promptTokens + context.maxTokens} tokens ` +
        `(${promptTokens} in the prompt, ${context.maxTokens} for the completion). Reduce the prompt or max_tokens.`,
      "max_tokens",
      "context_length_exceeded",
    );
  }
  const ignoreEos = body.ignore_eos ?? false;
  const stopTokenIds = body.stop_token_ids ?? [];
  // Workers see token ids only, so the model's eos travels as a stop token id.
  const stops = ignoreEos ? stopTokenIds : [...new Set([...stopTokenIds, ...context.eosTokenIds])];
  return create(SamplingParamsSchema, {
    temperature: body.temperature ?? undefined,
    topP: body.top_p ?? undefined,
    topK: body.top_k ?? undefined,
    minP: body.min_p ?? undefined,
    seed: body.seed == null ? undefined : BigInt(body.seed),
    maxTokens: context.maxTokens ?? room,
    minTokens: body.min_tokens ?? 0,
    stopTokenIds: stops,
    ignoreEos,
    presencePenalty: body.presence_penalty ?? 0,
    frequencyPenalty: body.frequency_penalty ?? 0,
    repetitionPenalty: body.repetition_penalty ?? undefined,
    logprobs: context.logprobs,
  });
}
