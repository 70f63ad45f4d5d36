import { describe, expect, it } from "vitest";
import type { KvEvent } from "../../src/engine/engine.ts";
import { blockHashes } from "../../src/engine/block_hash.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { KvIndexer } from "../../src/router/kv/kv_indexer.ts";
import { toWireEvent } from "../../src/worker/kv_event_publisher.ts";
import { batch } from "./helpers.ts";

describe("router and engine block hashes", () => {
  it("computes for a prompt exactly the hashes the mocker publishes in BlockStored", async () => {
    const engine = new MockerEngine({ blockSize: 16, numGpuBlocks: 64, speedupRatio: 0 });
    const events: KvEvent[] = [];
    const unsubscribe = engine.onKvEvents((batchEvents) => events.push(...batchEvents));
    // A real prompt's token ids (Qwen3 tokenizer ids of a chat prompt), 3 full blocks + 5.
    const prompt = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 3838, 374, 279, 6722, 315, 9625, 30, 21927, 11, 1246, 525, 498, 3351, 30, 358, 1079, 9963, 369, 264, 2805, 4226, 911, 279, 9104, 3974, 13, 151645, 198, 151644, 77091, 198, 151667, 271, 151668, 271, 785, 6722, 315, 9625];
    for await (const _ of engine.generate({
      requestId: "r",
      promptTokenIds: prompt,
      sampling: { temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens: 1, minTokens: 0, stopTokenIds: [], ignoreEos: true, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 },
    }));
    unsubscribe();
    const stored = events.flatMap((e) => (e.type === "stored" ? e.blockHashes : []));
    const routerHashes = blockHashes(prompt, 16);
    expect(routerHashes).toHaveLength(3);
    expect(stored.slice(0, 3)).toEqual(routerHashes);
    // And the indexer, fed the engine's snapshot as the worker sends it, matches all of them.
    const indexer = new KvIndexer();
    const snapshot = batch(0, []);
    snapshot.events = engine.kvSnapshot().map(toWireEvent);
    expect(indexer.applyEvents("mocker", snapshot, { snapshot: true })).toBe("applied");
    expect(indexer.findMatches(routerHashes).get("mocker")).toBe(3);
    await engine.close();
  });
});
