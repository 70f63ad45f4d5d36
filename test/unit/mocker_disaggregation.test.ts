import { describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import type { KvEvent, KvReservation, RemotePrefill, SamplingParams } from "../../src/engine/engine.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { seededRandom } from "../../src/util/seeded_random.ts";
import { collect, mockers, range, replay, request, tokensOf } from "./mocker_helpers.ts";

const mocker = mockers({ blockSize: 4, numGpuBlocks: 64 });

function hostBytes(engine: MockerEngine): Uint8Array {
  const { memory } = engine.kvTransfer.layout();
  if (!("buffer" in memory)) throw new Error("the mocker's KV memory is a host buffer");
  return new Uint8Array(memory.buffer);
}

/** Copies blocks between two mockers' KV memories segment by segment, as a transfer agent would. */
function copyBlocks(from: MockerEngine, fromIds: readonly number[], to: MockerEngine, toIds: readonly number[]): void {
  const src = hostBytes(from);
  const dst = hostBytes(to);
  const fromSegments = from.kvTransfer.layout().segments;
  to.kvTransfer.layout().segments.forEach((seg, s) => {
    const fromSeg = fromSegments[s];
    toIds.forEach((toId, i) => {
      const at = fromSeg.offset + fromIds[i] * fromSeg.blockStride;
      dst.set(src.subarray(at, at + seg.blockBytes), seg.offset + toId * seg.blockStride);
    });
  });
}

/** Runs `prompt` on a prefill mocker that holds its KV; returns the first token and the held blocks. */
async function prefill(engine: MockerEngine, requestId: string, prompt: number[], s: Partial<SamplingParams> = {}) {
  const outputs = await collect(engine.generate(request(requestId, prompt, { ...s, maxTokens: 1 }, { holdKvForRemoteDecode: true })));
  const last = outputs.at(-1)!;
  expect(last.heldKv).toBeDefined();
  return { firstTokenId: tokensOf(outputs)[0], held: last.heldKv! };
}

/** A remote prefill into `destination` that copies the blocks it lacks from `source`'s held blocks. */
function copyingFrom(source: MockerEngine, sourceIds: number[], destination: MockerEngine, firstTokenId: number, seen: KvReservation[] = []): RemotePrefill {
  return {
    firstTokenId,
    async fetchKv(reservation) {
      seen.push(reservation);
      const n = reservation.numCachedBlocks;
      copyBlocks(source, sourceIds.slice(n), destination, reservation.blockIds.slice(n));
    },
  };
}

describe("MockerEngine disaggregation", () => {
  it("holds a finished request's prompt blocks, referenced, until releaseHeldKv", async () => {
    const engine = mocker();
    const { held } = await prefill(engine, "p", range(10, 100));
    expect(held).toEqual({ blockIds: expect.any(Array), numTokens: 10 });
    expect(held.blockIds).toHaveLength(3);
    expect(engine.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 3 });
    expect(engine.kvTransfer.heldRequests()).toEqual(["p"]);
    await expect(async () => engine.generate(request("p", range(10, 100), {}, { holdKvForRemoteDecode: true }))).rejects.toMatchObject({ code: "invalid_argument" });
    expect(engine.kvTransfer.releaseHeldKv("p")).toBe(true);
    expect(engine.stats().kvBlocksUsed).toBe(0);
    expect(engine.kvTransfer.releaseHeldKv("p")).toBe(false);
    expect(engine.kvTransfer.heldRequests()).toEqual([]);
  });

  it("lays its KV memory out as K and V segments of whole blocks", () => {
    const engine = mocker({ numGpuBlocks: 10, kvBytesPerBlock: 64 });
    const layout = engine.kvTransfer.layout();
    expect(layout.segments).toEqual([
      { offset: 0, blockStride: 32, blockBytes: 32 },
      { offset: 320, blockStride: 32, blockBytes: 32 },
    ]);
    expect(hostBytes(engine).byteLength).toBe(640);
    expect(() => new MockerEngine({ kvBytesPerBlock: 12 })).toThrow(/kvBytesPerBlock must be a positive multiple of 8/);
  });

  it("continues a remote prefill exactly as an aggregated run goes on, from the fetched KV", async () => {
    const prompt = range(18, 500);
    const agg = tokensOf(await collect(mocker().generate(request("agg", prompt, { seed: 7n, maxTokens: 8 }))));
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt, { seed: 7n });
    expect(firstTokenId).toBe(agg[0]);

    const decoder = (mocker());
    const events: KvEvent[] = [];
    decoder.onKvEvents((batch) => events.push(...batch));
    const seen: KvReservation[] = [];
    const outputs = await collect(decoder.generate(request("r", prompt, { seed: 7n, maxTokens: 8 }, { remotePrefill: copyingFrom(prefiller, held.blockIds, decoder, firstTokenId, seen) })));
    expect(tokensOf(outputs)).toEqual(agg.slice(1));
    expect(outputs.at(-1)).toMatchObject({ finishReason: "length", usage: { promptTokens: 18, completionTokens: 8, cachedTokens: 0 } });
    expect(seen).toEqual([{ blockIds: expect.any(Array), numCachedBlocks: 0 }]);
    expect(seen[0].blockIds).toHaveLength(5);
    // The fetched full blocks are cached as if computed here, then decode fills more.
    const stored = events.flatMap((e) => (e.type === "stored" ? e.blockHashes : []));
    expect(stored).toEqual(blockHashes([...prompt, ...agg], 4).slice(0, stored.length));
    expect(stored.length).toBeGreaterThanOrEqual(4);
    expect(decoder.stats().kvBlocksUsed).toBe(0);
  });

  it("fetches only the blocks after its own prefix-cache hits", async () => {
    const system = range(8, 900);
    const prompt = [...system, ...range(7, 40)];
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt);
    const decoder = (mocker());
    await collect(decoder.generate(request("warm", [...system, 1, 2, 3], { maxTokens: 1 })));
    const seen: KvReservation[] = [];
    const outputs = await collect(decoder.generate(request("r", prompt, { maxTokens: 4 }, { remotePrefill: copyingFrom(prefiller, held.blockIds, decoder, firstTokenId, seen) })));
    expect(seen[0].numCachedBlocks).toBe(2);
    expect(outputs.at(-1)).toMatchObject({ finishReason: "length", usage: { cachedTokens: 8, completionTokens: 4 } });
  });

  it("fails the request with a clear error when the fetched bytes are not the prompt's KV", async () => {
    const prompt = range(12, 300);
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt);
    const decoder = (mocker());
    const events: KvEvent[] = [];
    decoder.onKvEvents((batch) => events.push(...batch));
    // The right blocks in the wrong order.
    const swapped = [held.blockIds[1], held.blockIds[0], held.blockIds[2]];
    const outputs = await collect(decoder.generate(request("r", prompt, { maxTokens: 4 }, { remotePrefill: copyingFrom(prefiller, swapped, decoder, firstTokenId) })));
    expect(outputs).toEqual([
      expect.objectContaining({ tokenIds: [], finishReason: "error", errorMessage: expect.stringMatching(/request r: the KV fetched from the prefill worker is wrong: prompt block 0/) }),
    ]);
    expect(events.filter((e) => e.type === "stored")).toEqual([]);
    expect(decoder.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 0 });
  });

  it("catches a fetch that left the partial last block unwritten", async () => {
    const prompt = range(10, 300);
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt);
    const decoder = (mocker());
    const partial: RemotePrefill = {
      firstTokenId,
      async fetchKv(reservation) {
        copyBlocks(prefiller, held.blockIds.slice(0, 2), decoder, reservation.blockIds.slice(0, 2));
      },
    };
    const outputs = await collect(decoder.generate(request("r", prompt, { maxTokens: 4 }, { remotePrefill: partial })));
    expect(outputs.at(-1)!.errorMessage).toMatch(/prompt block 2 .* position 8/);
  });

  it("computes the prompt itself when the fetch rejects, and still gives the same tokens", async () => {
    const prompt = range(14, 70);
    const agg = tokensOf(await collect(mocker().generate(request("agg", prompt, { seed: 3n, maxTokens: 6 }))));
    const decoder = mocker();
    const failing: RemotePrefill = { firstTokenId: agg[0], fetchKv: async () => Promise.reject(new Error("the prefill worker is gone")) };
    const outputs = await collect(decoder.generate(request("r", prompt, { seed: 3n, maxTokens: 6 }, { remotePrefill: failing })));
    expect(tokensOf(outputs)).toEqual(agg.slice(1));
    expect(outputs.at(-1)).toMatchObject({ finishReason: "length", usage: { completionTokens: 6 } });
    // A fetchKv that throws instead of rejecting falls back the same way.
    const throwing: RemotePrefill = { firstTokenId: agg[0], fetchKv: () => { throw new Error("no agent"); } };
    expect(tokensOf(await collect(decoder.generate(request("r2", prompt, { seed: 3n, maxTokens: 6 }, { remotePrefill: throwing }))))).toEqual(agg.slice(1));
    expect(decoder.stats().kvBlocksUsed).toBe(0);
  });

  it("spends no prefill time on a remote-prefilled prompt", async () => {
    // 50 ms per prompt token: computing 40 tokens would take 2 s.
    const timing = { decodeBaseMs: 1, prefillMsPerToken: 50, decodeMsPerSeq: 0, decodeMsPerContextToken: 0 };
    const prompt = range(40, 10);
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt);
    const decoder = (mocker({ speedupRatio: 1, timing }));
    const started = performance.now();
    await collect(decoder.generate(request("r", prompt, { maxTokens: 3 }, { remotePrefill: copyingFrom(prefiller, held.blockIds, decoder, firstTokenId) })));
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it("finishes at once when the first token already ends the request", async () => {
    const prompt = range(6, 10);
    const prefiller = mocker();
    const { firstTokenId, held } = await prefill(prefiller, "r", prompt);
    const decoder = (mocker());
    const outputs = await collect(decoder.generate(request("r", prompt, { maxTokens: 1 }, { remotePrefill: copyingFrom(prefiller, held.blockIds, decoder, firstTokenId) })));
    expect(outputs).toEqual([{ tokenIds: [], finishReason: "length", usage: { promptTokens: 6, completionTokens: 1, cachedTokens: 0 } }]);
    const stopping = await collect(decoder.generate(request("s", prompt, { maxTokens: 5, stopTokenIds: [firstTokenId] }, { remotePrefill: copyingFrom(prefiller, held.blockIds, decoder, firstTokenId) })));
    expect(stopping.at(-1)).toMatchObject({ tokenIds: [], finishReason: "stop" });
  });

  it("frees the blocks of a request aborted during its fetch once the fetch has stopped", async () => {
    const decoder = mocker();
    let fetchSettled!: () => void;
    let fetchStarted!: () => void;
    const started = new Promise<void>((resolve) => (fetchStarted = resolve));
    const stalled: RemotePrefill = {
      firstTokenId: 1,
      fetchKv: (_reservation, signal) =>
        new Promise((_, reject) => {
          fetchStarted();
          signal.addEventListener("abort", () => (fetchSettled = () => reject(signal.reason)));
        }),
    };
    const abort = new AbortController();
    const outputs = collect(decoder.generate(request("r", range(20), { maxTokens: 4 }, { remotePrefill: stalled }), abort.signal));
    await started;
    expect(decoder.stats()).toMatchObject({ runningRequests: 1, kvBlocksUsed: 5 });
    abort.abort();
    expect((await outputs).at(-1)).toMatchObject({ finishReason: "cancelled" });
    // The transfer may still be writing into the reserved blocks until it settles.
    expect(decoder.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 5 });
    fetchSettled();
    await expect.poll(() => decoder.stats().kvBlocksUsed).toBe(0);
  });

  it("keeps a request waiting, not failed, while held blocks fill the pool, and runs it on release", async () => {
    const engine = mocker({ numGpuBlocks: 4 });
    await prefill(engine, "held", range(16, 100));
    expect(engine.stats().kvBlocksUsed).toBe(4);
    const waiting = collect(engine.generate(request("next", range(6, 500), { maxTokens: 2 })));
    await expect.poll(() => engine.stats().waitingRequests).toBe(1);
    engine.kvTransfer.releaseHeldKv("held");
    expect((await waiting).at(-1)).toMatchObject({ finishReason: "length" });
  });

  it("keeps heldKv on the final output when a slow consumer gets its outputs merged", async () => {
    const engine = mocker();
    const slow = engine.generate(request("slow", range(10), { maxTokens: 5 }, { holdKvForRemoteDecode: true }));
    // Submitted in the same turn, so both finish at the same step while `slow` is unread.
    await collect(engine.generate(request("pacer", range(10, 100), { maxTokens: 5 })));
    const merged = await collect(slow);
    expect(merged).toHaveLength(1);
    expect(merged[0]).toMatchObject({ finishReason: "length", heldKv: { numTokens: 10 } });
    expect(merged[0].tokenIds).toHaveLength(5);
  });

  it("frees held blocks whose output the consumer stopped reading before it arrived", async () => {
    const engine = mocker();
    const iterator = engine.generate(request("gone", range(10), { maxTokens: 3 }, { holdKvForRemoteDecode: true }))[Symbol.asyncIterator]();
    await iterator.next();
    // By the time this longer request finishes, "gone" has finished too, its last output unread.
    await collect(engine.generate(request("pacer", range(10, 100), { maxTokens: 6 })));
    expect(engine.kvTransfer.heldRequests()).toEqual(["gone"]);
    await iterator.return!(undefined);
    expect(engine.kvTransfer.heldRequests()).toEqual([]);
    expect(engine.stats().kvBlocksUsed).toBe(0);
  });

  it("keeps tokens, blocks and KV events right under random remote prefills that succeed, fail or get aborted", async () => {
    const random = seededRandom(21);
    const prefiller = mocker({ numGpuBlocks: 512 });
    const reference = mocker({ numGpuBlocks: 512 });
    // A small pool: reservations wait for blocks, decodes preempt each other, cached blocks get evicted.
    const decoder = mocker({ numGpuBlocks: 24, maxNumSeqs: 6, maxNumBatchedTokens: 24 });
    const replayed = new Set<bigint>();
    let mismatches = 0;
    decoder.onKvEvents((batch) => {
      replay(batch, replayed);
      const snapshot = replay(decoder.kvSnapshot());
      if (snapshot.size !== replayed.size || [...snapshot].some((h) => !replayed.has(h))) mismatches++;
    });
    const systems = range(3).map((i) => range(4 + Math.floor(random() * 12), 10_000 * (i + 1)));
    const runs = range(30).map(async (i) => {
      const system = systems[Math.floor(random() * systems.length)];
      const prompt = [...system, ...range(1 + Math.floor(random() * 14), 100 * i)];
      const maxTokens = 1 + Math.floor(random() * 30);
      const fate = random() < 0.6 ? "copy" : random() < 0.5 ? "reject" : "abort";
      const delayMs = Math.floor(random() * 3);
      const expected = tokensOf(await collect(reference.generate(request(`ref-${i}`, prompt, { seed: BigInt(i), maxTokens }))));
      const { firstTokenId, held } = await prefill(prefiller, `r${i}`, prompt, { seed: BigInt(i) });
      const abort = new AbortController();
      const remotePrefill: RemotePrefill = {
        firstTokenId,
        async fetchKv(reservation) {
          await new Promise((resolve) => setTimeout(resolve, delayMs));
          if (fate === "abort") abort.abort();
          if (fate !== "copy") throw new Error(`fetch ${fate}ed`);
          const n = reservation.numCachedBlocks;
          copyBlocks(prefiller, held.blockIds.slice(n), decoder, reservation.blockIds.slice(n));
        },
      };
      const outputs = await collect(decoder.generate(request(`r${i}`, prompt, { seed: BigInt(i), maxTokens }, { remotePrefill }), abort.signal));
      prefiller.kvTransfer.releaseHeldKv(`r${i}`);
      if (fate === "abort") expect(outputs.at(-1)!.finishReason).toBe("cancelled");
      else expect({ i, tokens: tokensOf(outputs) }).toEqual({ i, tokens: expected.slice(1) });
    });
    await Promise.all(runs);
    await expect.poll(() => decoder.stats().kvBlocksUsed).toBe(0);
    expect(decoder.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0 });
    expect(prefiller.stats().kvBlocksUsed).toBe(0);
    expect(decoder.stats().preemptions).toBeGreaterThan(0);
    expect(mismatches).toBe(0);
    expect(replayed).toEqual(replay(decoder.kvSnapshot()));
  });

  it("releases held blocks on close", async () => {
    const engine = mocker();
    await prefill(engine, "p", range(9));
    await engine.close();
    expect(engine.kvTransfer.heldRequests()).toEqual([]);
  });
});
