/**
 * The mocker's per-request output queue: a consumer that falls behind the step loop gets the
 * outputs queued since its last read as one (tokens and logprobs concatenated, the latest usage
 * and finish), as vLLM's AsyncLLM merges them; a consumer that keeps up gets one per step.
 */
import { describe, expect, it } from "vitest";
import { collect, mockers, range, request } from "./mocker_helpers.ts";

const mocker = mockers({ vocabSize: 1000 });

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
