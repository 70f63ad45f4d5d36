/**
 * vLLM's defaults for sampling parameters, applied once where a request enters a worker so
 * that every engine sees complete parameters.
 */
import type { SamplingParams as WireSamplingParams } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { EngineError, type SamplingParams } from "./engine.ts";

export const DEFAULT_MAX_TOKENS = 16;

export function resolveSampling(wire: WireSamplingParams | undefined, maxTokensLeft: number): SamplingParams {
  const w = wire ?? ({} as Partial<WireSamplingParams>);
  const sampling: SamplingParams = {
    temperature: w.temperature ?? 1.0,
    topP: w.topP ?? 1.0,
    topK: w.topK ?? 0,
    minP: w.minP ?? 0,
    seed: w.seed,
    maxTokens: Math.min(w.maxTokens ?? maxTokensLeft, maxTokensLeft),
    minTokens: w.minTokens ?? 0,
    stopTokenIds: [...(w.stopTokenIds ?? [])],
    ignoreEos: w.ignoreEos ?? false,
    presencePenalty: w.presencePenalty ?? 0,
    frequencyPenalty: w.frequencyPenalty ?? 0,
    repetitionPenalty: w.repetitionPenalty ?? 1.0,
    logprobs: w.logprobs,
  };
  validateSampling(sampling);
  return sampling;
}

function validateSampling(s: SamplingParams): void {
  const bad = (msg: string) => {
    throw new EngineError("invalid_argument", msg);
  };
  if (!(s.temperature >= 0)) bad(`temperature must be >= 0, got ${s.temperature}`);
  if (!(s.topP > 0 && s.topP <= 1)) bad(`top_p must be in (0, 1], got ${s.topP}`);
  if (!Number.isInteger(s.topK) || s.topK < -1) bad(`top_k must be -1, 0 or a positive integer, got ${s.topK}`);
  if (!(s.minP >= 0 && s.minP <= 1)) bad(`min_p must be in [0, 1], got ${s.minP}`);
  if (!(s.repetitionPenalty > 0)) bad(`repetition_penalty must be > 0, got ${s.repetitionPenalty}`);
  if (!(Math.abs(s.presencePenalty) <= 2)) bad(`presence_penalty must be in [-2, 2], got ${s.presencePenalty}`);
  if (!(Math.abs(s.frequencyPenalty) <= 2)) bad(`frequency_penalty must be in [-2, 2], got ${s.frequencyPenalty}`);
  if (s.maxTokens < 1) bad(`max_tokens must be at least 1 and the prompt must leave room for it`);
  if (s.minTokens > s.maxTokens) bad(`min_tokens (${s.minTokens}) must not exceed max_tokens (${s.maxTokens})`);
  if (s.logprobs !== undefined && s.logprobs > 20) bad(`logprobs must be at most 20, got ${s.logprobs}`);
}
