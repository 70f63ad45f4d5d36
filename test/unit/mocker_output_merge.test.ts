/**
 * The mocker's per-request output queue: a consumer that falls behind the step loop gets the
 * outputs queued since its last read as one (tokens and logprobs concatenated, the latest usage
 * and finish), as vLLM's AsyncLLM merges them; a consumer that keeps up gets one per step.
 */
import { afterEach, describe, expect, it } from "vitest";
import type { EngineOutput, EngineRequest, SamplingParams } from "../../src/engine/engine.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

function request(requestId: string, promptTokenIds: number[], s: Partial<SamplingParams> = {}): EngineRequest {
  return {
    requestId,
    promptTokenIds,
    sampling: {
      temperature: 1, topP: 1, topK: 0, minP: 0, maxTokens: 8, minTokens: 0, stopTokenIds: [], ignoreEos: true,
      presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, ...s,
    },
  };
}

async function collect(stream: AsyncIterable<EngineOutput>): Promise<EngineOutput[]> {
  const outputs: EngineOutput[] = [];
  for await (const output of stream) outputs.push(output);
  return outputs;
}

const engines: MockerEngine[] = [];
function mocker(): MockerEngine {
  const engine = new MockerEngine({ speedupRatio: 0, vocabSize: 1000 });
  engines.push(engine);
  return engine;
}
afterEach(async () => {
  await Promise.all(engines.splice(0).map((e) => e.close()));
});

describe("mocker output merging", () => {
  it("hands a consumer that read nothing while its request ran one output with every token, logprob and the finish", async () => {
    const alone = await collect(mocker().generate(request("slow", range(6), { maxTokens: 20, logprobs: 2 })));
    expect(alone).toHaveLength(20);

    const engine = mocker();
    const slow = engine.generate(request("slow", range(6), { maxTokens: 20, logprobs: 2 }));
    // Submitted in the same turn, so both requests finish at the same step.
    await collect(engine.generate(request("pacer", range(6, 100), { maxTokens: 20 })));
    const merged = await collect(slow);

    expect(merged).toHaveLength(1);
    expect(merged[0].tokenIds).toEqual(alone.flatMap((o) => o.tokenIds));
    expect(merged[0].logprobs).toEqual(alone.flatMap((o) => o.logprobs!));
    expect(merged[0].finishReason).toBe("length");
    expect(merged[0].usage).toEqual(alone.at(-1)!.usage);
  });

  it("delivers queued tokens before a cancellation rather than merging them into it", async () => {
    const engine = mocker();
    const slow = engine.generate(request("slow", range(6), { maxTokens: 1000 }));
    await collect(engine.generate(request("pacer", range(6, 100), { maxTokens: 5 })));
    engine.abort("slow");
    const outputs = await collect(slow);

    expect(outputs.map((o) => o.tokenIds.length)).toEqual([5, 0]);
    expect(outputs[0].finishReason).toBeUndefined();
    expect(outputs[1].finishReason).toBe("cancelled");
  });
});
