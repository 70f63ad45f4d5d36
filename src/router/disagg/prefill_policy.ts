/**
 * Conditional disaggregation: whether a request's prefill goes to a prefill worker or runs on
 * the decode worker itself. A remote prefill pays for a KV transfer and a second hop, which a
 * short uncached prompt does not earn back; and queueing behind busy prefill workers costs more
 * TTFT than computing the prompt locally.
 */
import type { WorkerHandle } from "../worker_handle.ts";

export interface PrefillPolicyOptions {
  /**
   * Prefill on the decode worker when the prompt tokens it does not already hold in its prefix
   * cache are fewer than this (0: always remote when prefill workers exist).
   */
  maxLocalPrefillLength: number;
  /**
   * Prefill on the decode worker when every prefill worker has at least this many of this
   * router's requests in flight (0: no limit).
   */
  maxPrefillQueueSize: number;
}

export type PrefillPlace =
  | { where: "remote" }
  | { where: "local"; reason: "no_prefill_workers" | "short_prompt" | "prefill_queue_full" | "single_token" };

export interface PrefillSituation {
  /** Prompt tokens the chosen decode worker would have to compute itself. */
  uncachedTokens: number;
  /** Tokens the request may still generate (undefined: up to the context length). */
  maxTokens: number | undefined;
  prefillWorkers: readonly WorkerHandle[];
}

export function decidePrefillPlace(situation: PrefillSituation, options: PrefillPolicyOptions): PrefillPlace {
  if (situation.prefillWorkers.length === 0) return { where: "local", reason: "no_prefill_workers" };
  // The prefill's one token would be the whole answer: a second hop buys nothing.
  if (situation.maxTokens !== undefined && situation.maxTokens <= 1) return { where: "local", reason: "single_token" };
  if (situation.uncachedTokens < options.maxLocalPrefillLength) return { where: "local", reason: "short_prompt" };
  if (options.maxPrefillQueueSize > 0 && situation.prefillWorkers.every((w) => w.inFlight >= options.maxPrefillQueueSize)) {
    return { where: "local", reason: "prefill_queue_full" };
  }
  return { where: "remote" };
}
