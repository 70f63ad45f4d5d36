/**
 * What the mocker's unit tests share: requests with every sampling parameter spelled out,
 * mockers that are closed after each test, and readers of their output streams and KV events.
 */
import { afterEach } from "vitest";
import type { EngineOutput, EngineRequest, KvEvent, SamplingParams } from "../../src/engine/engine.ts";
import { MockerEngine, type MockerEngineOptions } from "../../src/engine/mocker/mocker_engine.ts";

export const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

/** Neutral sampling (temperature 1, no filters or penalties) that runs to maxTokens: eos ids are ignored unless a case says otherwise. */
export function sampling(overrides: Partial<SamplingParams> = {}): SamplingParams {
  return {
    temperature: 1, topP: 1, topK: 0, minP: 0, maxTokens: 8, minTokens: 0, stopTokenIds: [], ignoreEos: true,
    presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, ...overrides,
  };
}

export function request(requestId: string, promptTokenIds: number[], s: Partial<SamplingParams> = {}, extra: Partial<EngineRequest> = {}): EngineRequest {
  return { requestId, promptTokenIds, sampling: sampling(s), ...extra };
}

/**
 * Registers, in the calling test file, an afterEach that closes every mocker made since the
 * last test; returns the function that makes them: no simulated delay (speedupRatio 0), then
 * the file's `defaults`, then the case's options.
 */
export function mockers(defaults: MockerEngineOptions = {}): (options?: MockerEngineOptions) => MockerEngine {
  const engines: MockerEngine[] = [];
  afterEach(async () => {
    await Promise.all(engines.splice(0).map((e) => e.close()));
  });
  return (options = {}) => {
    const engine = new MockerEngine({ speedupRatio: 0, ...defaults, ...options });
    engines.push(engine);
    return engine;
  };
}

export async function collect(stream: AsyncIterable<EngineOutput>): Promise<EngineOutput[]> {
  const outputs: EngineOutput[] = [];
  for await (const output of stream) outputs.push(output);
  return outputs;
}

export const tokensOf = (outputs: EngineOutput[]) => outputs.flatMap((o) => o.tokenIds);

/** Replays events into the set of hashes a router would believe cached. */
export function replay(events: KvEvent[], into = new Set<bigint>()): Set<bigint> {
  for (const e of events) {
    if (e.type === "cleared") into.clear();
    else if (e.type === "stored") for (const h of e.blockHashes) into.add(h);
    else for (const h of e.blockHashes) into.delete(h);
  }
  return into;
}
