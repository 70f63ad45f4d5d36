/**
 * The mocker with `ownClock`: the simulated engine does not wait for the event loop it shares
 * with its consumers. A consumer that keeps the loop busy gets the steps that ran meanwhile
 * merged into fewer outputs, with the same tokens in the same order; an idle engine that gets
 * a request has nothing to catch up on.
 */
import { describe, expect, it } from "vitest";
import type { EngineOutput } from "../../src/engine/engine.ts";
import { mockers, range, request } from "./mocker_helpers.ts";

const mocker = mockers({ vocabSize: 1000 });

/** Holds the thread as a busy consumer would (parsing, encoding, writing sockets). */
function busyFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

async function collect(stream: AsyncIterable<EngineOutput>, workMsPerOutput = 0): Promise<EngineOutput[]> {
  const outputs: EngineOutput[] = [];
  for await (const output of stream) {
    outputs.push(output);
    busyFor(workMsPerOutput);
  }
  return outputs;
}

describe("mocker ownClock", () => {
  it("merges the steps that ran while a busy consumer held the loop, keeping every token in order", async () => {
    const reference = await collect(mocker().generate(request("r", range(6), { maxTokens: 200, logprobs: 1 })));
    expect(reference).toHaveLength(200);

    const outputs = await collect(mocker({ ownClock: true }).generate(request("r", range(6), { maxTokens: 200, logprobs: 1 })), 2);
    expect(outputs.length).toBeLessThan(100);
    expect(outputs.flatMap((o) => o.tokenIds)).toEqual(reference.flatMap((o) => o.tokenIds));
    expect(outputs.flatMap((o) => o.logprobs!)).toEqual(reference.flatMap((o) => o.logprobs!));
    expect(outputs.map((o) => o.usage.completionTokens)).toEqual(outputs.map((_, i) => outputs.slice(0, i + 1).reduce((n, o) => n + o.tokenIds.length, 0)));
    expect(outputs.at(-1)).toMatchObject({ finishReason: "length", usage: reference.at(-1)!.usage });
  });

  it("does not count loop time from before a request as time an idle engine could have run", async () => {
    const engine = mocker({ ownClock: true });
    await collect(engine.generate(request("earlier", range(6, 100), { maxTokens: 3 })));
    busyFor(50);
    // Were those 50 ms a tick's share, its first tick would run MAX_TICK_MS (5 ms) of steps: hundreds.
    const outputs = await collect(engine.generate(request("r", range(6), { maxTokens: 2000 })), 2);
    expect(outputs[0].tokenIds.length).toBeLessThan(100);
    expect(outputs.flatMap((o) => o.tokenIds)).toHaveLength(2000);
  });

  it("keeps the simulated step times, catching up on steps that fell due while the loop was busy", async () => {
    // 2 ms steps at ratio 2.5 (decodeBaseMs 5); the consumer holds the loop for 10 ms per output.
    const engine = mocker({ ownClock: true, speedupRatio: 2.5, timing: { decodeMsPerSeq: 0, decodeMsPerContextToken: 0, prefillMsPerToken: 0 } });
    const started = performance.now();
    const outputs = await collect(engine.generate(request("r", range(4), { maxTokens: 40 })), 10);
    const elapsedMs = performance.now() - started;
    // One step per output would take 40 x 10 ms; the engine's own clock finishes near 40 x 2 ms.
    expect(outputs.length).toBeLessThan(20);
    expect(elapsedMs).toBeLessThan(300);
    expect(outputs.flatMap((o) => o.tokenIds)).toHaveLength(40);
  });
});
