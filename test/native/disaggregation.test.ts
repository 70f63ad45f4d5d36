/**
 * Disaggregated serving on the native engine: a prefill engine holds a prompt's KV after its
 * first token, two transfer agents copy the held blocks over TCP into blocks a decode engine
 * reserved, and the decode engine goes on as if it had computed the prompt itself. Greedy
 * decoding then gives exactly (logprobs included, bit for bit on the CPU) what one engine gives
 * after the first token, however the KV arrives: fetched, partly from the decode engine's own
 * prefix cache, or recomputed when the fetch fails or the blocks cannot be reserved.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { blockHashes } from "../../src/engine/block_hash.ts";
import type {
  EngineRequest,
  HeldKv,
  KvEvent,
  KvMemoryLayout,
  KvReservation,
  RemotePrefill,
  SamplingParams,
} from "../../src/engine/engine.ts";
import { NativeEngine, type NativeEngineOptions } from "../../src/engine/native/native_engine.ts";
import { TransferAgent, type BlockDescriptor, type MemoryRegion } from "../../src/transfer/transfer_agent.ts";
import { collect, sampling, type Collected } from "./helpers.ts";
import { promptTokens, testLlamaDir } from "./models.ts";

/** Bytes of one 16-token block of the Llama test model: 2 layers, K and V, 2 KV heads of 16 floats. */
const BLOCK_BYTES_ALL_LAYERS = 2 * 2 * 16 * 2 * 16 * 4;

const engines: NativeEngine[] = [];
const agents: TransferAgent[] = [];

async function load(options: Partial<NativeEngineOptions> = {}): Promise<NativeEngine> {
  const e = await NativeEngine.load({ model: testLlamaDir(), kvCacheMemoryBytes: 8 << 20, device: "cpu", ...options });
  engines.push(e);
  return e;
}

/** An engine's KV cache registered with its own transfer agent. */
interface KvEndpoint {
  engine: NativeEngine;
  agent: TransferAgent;
  layout: KvMemoryLayout;
  region: MemoryRegion;
}

function endpoint(engine: NativeEngine, name: string): KvEndpoint {
  const layout = engine.kvTransfer!.layout();
  const memory = layout.memory;
  if (!("address" in memory)) throw new Error("the native engine's KV cache is addressed, not a buffer");
  const agent = TransferAgent.create({ name });
  agents.push(agent);
  const region = agent.registerAddress(memory.address, memory.length, { kind: memory.kind, deviceId: memory.deviceId });
  return { engine, agent, layout, region };
}

/** Reads the held blocks `from` kept into the reserved blocks of `to` that are not prefix-cache hits, segment by segment. */
async function copyHeldKv(from: KvEndpoint, held: HeldKv, to: KvEndpoint, reservation: KvReservation, signal: AbortSignal) {
  const remote: BlockDescriptor[] = [];
  const local: BlockDescriptor[] = [];
  for (let i = reservation.numCachedBlocks; i < reservation.blockIds.length; i++) {
    from.layout.segments.forEach((src, s) => {
      const dst = to.layout.segments[s];
      remote.push({ region: from.region.id, offset: src.offset + held.blockIds[i] * src.blockStride, length: src.blockBytes });
      local.push({ region: to.region.id, offset: dst.offset + reservation.blockIds[i] * dst.blockStride, length: dst.blockBytes });
    });
  }
  if (remote.length > 0) await to.agent.read(from.agent.name, remote, local, { signal });
}

async function run(engine: NativeEngine, request: EngineRequest, signal?: AbortSignal): Promise<Collected & { heldKv?: HeldKv }> {
  const c: Collected & { heldKv?: HeldKv } = { tokenIds: [], logprobs: [], outputs: [] };
  for await (const out of engine.generate(request, signal)) {
    c.outputs.push(out);
    c.tokenIds.push(...out.tokenIds);
    if (out.logprobs) c.logprobs.push(...out.logprobs);
    c.usage = out.usage;
    if (out.heldKv) c.heldKv = out.heldKv;
    if (out.finishReason) {
      c.finishReason = out.finishReason;
      c.errorMessage = out.errorMessage;
    }
  }
  return c;
}

let agg: NativeEngine;
let prefill: KvEndpoint;
let decode: KvEndpoint;

beforeAll(async () => {
  agg = await load();
  // A small prefill cache, so that other traffic evicts whatever is not held.
  prefill = endpoint(await load({ kvCacheMemoryBytes: 24 * BLOCK_BYTES_ALL_LAYERS }), "prefill");
  decode = endpoint(await load(), "decode");
  decode.agent.loadRemoteMetadata(prefill.agent.metadata());
});
afterAll(async () => {
  // Agents first: their regions point into the engines' KV caches.
  await Promise.all(agents.map((a) => a.close()));
  await Promise.all(engines.map((e) => e.close()));
});

/** Runs the prompt on the prefill engine up to its first token, holding the prompt's KV. */
async function prefillOnly(requestId: string, prompt: number[], params: SamplingParams) {
  const out = await run(prefill.engine, {
    requestId,
    promptTokenIds: prompt,
    sampling: { ...params, maxTokens: 1 },
    holdKvForRemoteDecode: true,
  });
  // "stop" when the first token is a stop token: the KV is held all the same.
  expect(["length", "stop"]).toContain(out.finishReason);
  expect(out.tokenIds).toHaveLength(1);
  expect(out.heldKv).toEqual({ blockIds: expect.any(Array), numTokens: prompt.length });
  expect(out.heldKv!.blockIds).toHaveLength(Math.ceil(prompt.length / 16));
  return { firstTokenId: out.tokenIds[0], heldKv: out.heldKv! };
}

interface DisaggRun {
  decoded: Collected;
  firstTokenId: number;
  reservations: KvReservation[];
}

/** Prefill on one engine, fetch the KV over TCP, decode on the other; releases the held blocks afterwards. */
async function disagg(
  requestId: string,
  prompt: number[],
  params: SamplingParams,
  fetch?: (reservation: KvReservation, signal: AbortSignal, held: HeldKv) => Promise<void>,
): Promise<DisaggRun> {
  const { firstTokenId, heldKv } = await prefillOnly(requestId, prompt, params);
  const reservations: KvReservation[] = [];
  const remotePrefill: RemotePrefill = {
    firstTokenId,
    fetchKv: async (reservation, signal) => {
      reservations.push(reservation);
      if (fetch) await fetch(reservation, signal, heldKv);
      else await copyHeldKv(prefill, heldKv, decode, reservation, signal);
    },
  };
  try {
    const decoded = await run(decode.engine, { requestId, promptTokenIds: prompt, sampling: params, remotePrefill });
    return { decoded, firstTokenId, reservations };
  } finally {
    expect(prefill.engine.kvTransfer!.releaseHeldKv(requestId)).toBe(true);
  }
}

/** After all requests ended: nothing in use, the books balanced. */
async function expectIdle(...engineList: NativeEngine[]) {
  for (const e of engineList) {
    await e.settled();
    expect(e.checkInvariants()).toBe("");
    expect(e.stats()).toMatchObject({ kvBlocksUsed: 0, runningRequests: 0, waitingRequests: 0 });
    expect(e.kvTransfer!.heldRequests()).toEqual([]);
  }
}

const storedHashes = (events: KvEvent[]) => new Set(events.flatMap((e) => (e.type === "stored" ? e.blockHashes : [])));

describe("KV layout", () => {
  it("describes the CPU KV cache as one host region, K then V per layer, a block per block stride", () => {
    const layout = decode.layout;
    const blocks = decode.engine.info.numKvBlocks;
    const blockBytes = 16 * 2 * 16 * 4;
    expect(layout.memory).toMatchObject({ kind: "host", length: blocks * BLOCK_BYTES_ALL_LAYERS, deviceId: 0 });
    expect(layout.segments).toEqual([0, 1, 2, 3].map((i) => ({ offset: i * blocks * blockBytes, blockStride: blockBytes, blockBytes })));
    expect(layout.dtype).toBe("float32");
  });
});

describe("prefill side: held KV", () => {
  it("holds the prompt's blocks after a normal finish, releases the rest, and frees them on release", async () => {
    const e = prefill.engine;
    const prompt = promptTokens(20, 501);
    const out = await run(e, { requestId: "hold", promptTokenIds: prompt, sampling: sampling({ maxTokens: 20 }), holdKvForRemoteDecode: true });
    expect(out.finishReason).toBe("length");
    // 40 tokens took 3 blocks; the 2 that cover the prompt stay.
    expect(out.heldKv!.blockIds).toHaveLength(2);
    expect(out.heldKv!.numTokens).toBe(20);
    expect(out.outputs.slice(0, -1).every((o) => o.heldKv === undefined)).toBe(true);
    expect(e.kvTransfer!.heldRequests()).toEqual(["hold"]);
    expect(e.stats().kvBlocksUsed).toBe(2);
    expect(e.checkInvariants()).toBe("");
    // A second hold under the same id is refused while the first holds blocks.
    await expect(run(e, { requestId: "hold", promptTokenIds: prompt, sampling: sampling(), holdKvForRemoteDecode: true })).rejects.toThrow(
      /still holds KV blocks/,
    );
    expect(e.kvTransfer!.releaseHeldKv("hold")).toBe(true);
    expect(e.kvTransfer!.releaseHeldKv("hold")).toBe(false);
    expect(e.kvTransfer!.releaseHeldKv("never-held")).toBe(false);
    await expectIdle(e);
    // The full prompt block stays in the prefix cache after the release.
    expect(storedHashes(e.nativeKvSnapshot()).has(blockHashes(prompt, 16)[0])).toBe(true);
  });

  it("holds nothing for a request that is cancelled", async () => {
    const e = prefill.engine;
    const controller = new AbortController();
    const out = (async () => {
      const c: HeldKv[] = [];
      let reason;
      for await (const o of e.generate(
        { requestId: "hold-cancel", promptTokenIds: promptTokens(30, 502), sampling: sampling({ maxTokens: 200 }), holdKvForRemoteDecode: true },
        controller.signal,
      )) {
        if (o.tokenIds.length > 0 && !controller.signal.aborted) controller.abort();
        if (o.heldKv) c.push(o.heldKv);
        reason = o.finishReason;
      }
      return { held: c, reason };
    })();
    await expect(out).resolves.toEqual({ held: [], reason: "cancelled" });
    expect(e.kvTransfer!.heldRequests()).toEqual([]);
    await expectIdle(e);
  });
});

describe("decode side: remote prefill", () => {
  // Shorter than a block, one block and a bit, just under two blocks, several blocks.
  const prompts = [5, 17, 30, 75].map((n, i) => promptTokens(n, 600 + i));

  it("decodes exactly what one engine generates after the first token, for prompts of 1 to 5 blocks", async () => {
    const params = sampling({ maxTokens: 10, logprobs: 2 });
    // Prefill everything first, then churn the small prefill cache: held blocks must survive it.
    const prefilled: { firstTokenId: number; heldKv: HeldKv }[] = [];
    for (const [i, p] of prompts.entries()) prefilled.push(await prefillOnly(`d-${i}`, p, params));
    await Promise.all([0, 1, 2].map((i) => collect(prefill.engine, `churn-${i}`, promptTokens(60, 700 + i), sampling({ maxTokens: 40 }))));
    expect(prefill.engine.stats().kvBlocksUsed).toBe(prefilled.reduce((n, p) => n + p.heldKv.blockIds.length, 0));

    const decodeEvents: KvEvent[] = [];
    const unsubscribe = decode.engine.onKvEvents((events) => decodeEvents.push(...events));
    for (const [i, p] of prompts.entries()) {
      const whole = await collect(agg, `agg-${i}`, p, params);
      const reservations: KvReservation[] = [];
      const decoded = await run(decode.engine, {
        requestId: `d-${i}`,
        promptTokenIds: p,
        sampling: params,
        remotePrefill: {
          firstTokenId: prefilled[i].firstTokenId,
          fetchKv: async (reservation, signal) => {
            reservations.push(reservation);
            await copyHeldKv(prefill, prefilled[i].heldKv, decode, reservation, signal);
          },
        },
      });
      expect(prefilled[i].firstTokenId).toBe(whole.tokenIds[0]);
      expect(decoded.tokenIds).toEqual(whole.tokenIds.slice(1));
      expect(decoded.logprobs).toEqual(whole.logprobs.slice(1));
      expect(decoded.finishReason).toBe("length");
      expect(decoded.usage).toEqual({ promptTokens: p.length, completionTokens: 10, cachedTokens: 0 });
      expect(reservations).toEqual([{ blockIds: expect.any(Array), numCachedBlocks: 0 }]);
      expect(reservations[0].blockIds).toHaveLength(Math.ceil(p.length / 16));
      // The prompt's full blocks are stored (and announced) as if computed here.
      const hashes = blockHashes(p, 16);
      const stored = storedHashes(decodeEvents);
      expect(hashes.every((h) => stored.has(h))).toBe(true);
      expect(prefill.engine.kvTransfer!.releaseHeldKv(`d-${i}`)).toBe(true);
    }
    unsubscribe();
    expect(storedHashes(decode.engine.kvSnapshot())).toEqual(storedHashes(decode.engine.nativeKvSnapshot()));
    await expectIdle(prefill.engine, decode.engine);
  });

  it("counts the first token for penalties and stops", async () => {
    const p = promptTokens(23, 610);
    const penalised = sampling({ maxTokens: 8, frequencyPenalty: 1.5, repetitionPenalty: 1.3, presencePenalty: 0.5 });
    const whole = await collect(agg, "pen", p, penalised);
    const { decoded } = await disagg("pen", p, penalised);
    expect(decoded.tokenIds).toEqual(whole.tokenIds.slice(1));

    // max_tokens 1 and a stop token at the first token end the request at once, without tokens.
    const one = await disagg("one", promptTokens(21, 611), sampling({ maxTokens: 1 }));
    expect(one.decoded).toMatchObject({ tokenIds: [], finishReason: "length", usage: { promptTokens: 21, completionTokens: 1 } });
    const first = (await collect(agg, "stop-agg", promptTokens(19, 612), sampling({ maxTokens: 1 }))).tokenIds[0];
    const stopped = await disagg("stop", promptTokens(19, 612), sampling({ maxTokens: 8, stopTokenIds: [first] }));
    expect(stopped.decoded).toMatchObject({ tokenIds: [], finishReason: "stop", usage: { completionTokens: 1 } });
    // Their prompts' KV still went into the cache.
    expect(storedHashes(decode.engine.nativeKvSnapshot()).has(blockHashes(promptTokens(21, 611), 16)[0])).toBe(true);
    await expectIdle(prefill.engine, decode.engine);
  });

  it("continues a seeded random request exactly as one engine would", async () => {
    const p = promptTokens(37, 613);
    const seeded = sampling({ maxTokens: 12, temperature: 1.3, topP: 0.95, seed: 4242n });
    const whole = await collect(agg, "seeded-agg", p, seeded);
    const { decoded, firstTokenId } = await disagg("seeded", p, seeded);
    expect(firstTokenId).toBe(whole.tokenIds[0]);
    expect(decoded.tokenIds).toEqual(whole.tokenIds.slice(1));
    await expectIdle(prefill.engine, decode.engine);
  });

  it("takes leading blocks from its own prefix cache and fetches only the rest", async () => {
    const params = sampling({ maxTokens: 9, logprobs: 1 });
    const shared = promptTokens(40, 620);
    await collect(decode.engine, "warm", shared, sampling({ maxTokens: 2 }));

    // 63 tokens: blocks 0 and 1 lie inside the shared 40 tokens, 2 and 3 do not.
    const p = [...shared, ...promptTokens(23, 621)];
    const whole = await collect(agg, "hit-agg", p, params);
    const hit = await disagg("hit", p, params);
    expect(hit.reservations).toHaveLength(1);
    expect(hit.reservations[0].numCachedBlocks).toBe(2);
    expect(hit.reservations[0].blockIds).toHaveLength(4);
    expect(hit.decoded.tokenIds).toEqual(whole.tokenIds.slice(1));
    expect(hit.decoded.logprobs).toEqual(whole.logprobs.slice(1));
    expect(hit.decoded.usage).toEqual({ promptTokens: 63, completionTokens: 9, cachedTokens: 32 });

    // A prompt the cache holds whole: every block hits (no logits are needed), nothing to fetch.
    const exact = shared.slice(0, 32);
    const wholeExact = await collect(agg, "exact-agg", exact, params);
    const all = await disagg("exact", exact, params, async (reservation) => {
      expect(reservation.numCachedBlocks).toBe(reservation.blockIds.length);
    });
    expect(all.reservations[0]).toMatchObject({ numCachedBlocks: 2 });
    expect(all.decoded.tokenIds).toEqual(wholeExact.tokenIds.slice(1));
    expect(all.decoded.usage!.cachedTokens).toBe(32);
    await expectIdle(prefill.engine, decode.engine);
  });

  it("decodes several remote prefills at once, next to local requests", async () => {
    const params = sampling({ maxTokens: 7 });
    const many = [3, 16, 33, 48, 50].map((n, i) => promptTokens(n, 630 + i));
    const wholes = await Promise.all(many.map((p, i) => collect(agg, `many-agg-${i}`, p, params)));
    const local = many.map((_, i) => collect(decode.engine, `local-${i}`, promptTokens(25, 640 + i), params));
    const runs = await Promise.all(many.map((p, i) => disagg(`many-${i}`, p, params)));
    await Promise.all(local);
    runs.forEach((r, i) => expect(r.decoded.tokenIds).toEqual(wholes[i].tokenIds.slice(1)));
    await expectIdle(prefill.engine, decode.engine);
  });

  it("computes the prompt itself when fetchKv rejects, even after writing junk into the blocks", async () => {
    // A region of junk on the prefill agent, to scribble over the reserved blocks before failing.
    const junk = Buffer.alloc(64 * 1024, 0x7f);
    const junkRegion = prefill.agent.registerMemory(junk);
    decode.agent.loadRemoteMetadata(prefill.agent.metadata());
    const params = sampling({ maxTokens: 8, logprobs: 2 });
    const p = promptTokens(45, 650);
    const whole = await collect(agg, "fail-agg", p, params);
    const failuresBefore = decode.engine.kvFetchFailures;
    const failed = await disagg("fail", p, params, async (reservation, signal) => {
      const seg = decode.layout.segments[0];
      await decode.agent.read(
        "prefill",
        reservation.blockIds.map(() => ({ region: junkRegion.id, offset: 0, length: seg.blockBytes })),
        reservation.blockIds.map((b) => ({ region: decode.region.id, offset: seg.offset + b * seg.blockStride, length: seg.blockBytes })),
        { signal },
      );
      throw new Error("the prefill worker went away");
    });
    expect(failed.reservations).toHaveLength(1);
    expect(decode.engine.kvFetchFailures).toBe(failuresBefore + 1);
    expect(failed.decoded.tokenIds).toEqual(whole.tokenIds.slice(1));
    expect(failed.decoded.logprobs).toEqual(whole.logprobs.slice(1));
    expect(failed.decoded.usage).toMatchObject({ promptTokens: 45, completionTokens: 8 });
    // The junk never reached the prefix cache: the same prompt computed here again agrees.
    const again = await collect(decode.engine, "fail-again", p, params);
    expect(again.usage!.cachedTokens).toBe(32);
    expect(again.tokenIds).toEqual(whole.tokenIds);
    prefill.agent.deregisterMemory(junkRegion);
    await expectIdle(prefill.engine, decode.engine);
  });

  it("cancels a request aborted during its fetch and frees the reservation once the fetch lets go", async () => {
    const e = decode.engine;
    const before = e.stats().kvBlocksUsed;
    for (const how of ["signal", "abort(id)"] as const) {
      const requestId = `abort-${how}`;
      const p = promptTokens(50, 660);
      const { firstTokenId } = await prefillOnly(requestId, p, sampling());
      const controller = new AbortController();
      let fetchSignal: AbortSignal | undefined;
      let reservedBlocks = 0;
      let fetchStarted!: () => void;
      const fetching = new Promise<void>((resolve) => (fetchStarted = resolve));
      const result = run(
        e,
        {
          requestId,
          promptTokenIds: p,
          sampling: sampling({ maxTokens: 8 }),
          remotePrefill: {
            firstTokenId,
            fetchKv: (reservation, signal) => {
              fetchSignal = signal;
              reservedBlocks = reservation.blockIds.length;
              fetchStarted();
              // Stands for a transfer that only ends when cancelled.
              return new Promise((_, reject) => signal.addEventListener("abort", () => reject(signal.reason), { once: true }));
            },
          },
        },
        controller.signal,
      );
      await fetching;
      expect(reservedBlocks).toBe(4);
      expect(e.stats().kvBlocksUsed).toBe(before + 4);
      expect(e.stats().waitingRequests).toBe(1);
      expect(e.checkInvariants()).toBe("");
      if (how === "signal") controller.abort();
      else expect(e.abort(requestId)).toBe(true);
      const out = await result;
      expect(fetchSignal!.aborted).toBe(true);
      expect(out).toMatchObject({ tokenIds: [], finishReason: "cancelled" });
      expect(e.stats().kvBlocksUsed).toBe(before);
      expect(e.checkInvariants()).toBe("");
      expect(prefill.engine.kvTransfer!.releaseHeldKv(requestId)).toBe(true);
    }
    await expectIdle(prefill.engine, decode.engine);
  });

  it("never fetches for a request aborted before its reservation arrived", async () => {
    const e = decode.engine;
    let fetched = false;
    const it = e
      .generate({
        requestId: "early-abort",
        promptTokenIds: promptTokens(40, 670),
        sampling: sampling(),
        remotePrefill: {
          firstTokenId: 1,
          fetchKv: async () => {
            fetched = true;
          },
        },
      })
      [Symbol.asyncIterator]();
    const first = it.next(); // submits the request
    expect(e.abort("early-abort")).toBe(true);
    await expect(first).resolves.toMatchObject({ value: { finishReason: "cancelled" } });
    await e.settled();
    expect(fetched).toBe(false);
    await expectIdle(e);
  });
});

describe("decode side: no room to reserve", () => {
  it("computes the prompt itself when the pool cannot hold it, once blocks are free", async () => {
    // 8 blocks; a held 90-token prompt takes 6 of them, a 40-token prompt needs 3.
    const small = await load({ kvCacheMemoryBytes: 8 * BLOCK_BYTES_ALL_LAYERS });
    expect(small.info.numKvBlocks).toBe(8);
    await run(small, { requestId: "filler", promptTokenIds: promptTokens(90, 680), sampling: sampling({ maxTokens: 1 }), holdKvForRemoteDecode: true });
    expect(small.stats().kvBlocksUsed).toBe(6);

    const params = sampling({ maxTokens: 6, logprobs: 1 });
    const p = promptTokens(40, 681);
    const whole = await collect(agg, "full-agg", p, params);
    let fetched = false;
    const decoding = run(small, {
      requestId: "full",
      promptTokenIds: p,
      sampling: params,
      remotePrefill: {
        firstTokenId: whole.tokenIds[0],
        fetchKv: async () => {
          fetched = true;
        },
      },
    });
    // The request was added and found no room; it waits, with nothing running, for blocks.
    await small.settled();
    expect(small.stats()).toMatchObject({ waitingRequests: 1, runningRequests: 0, kvBlocksUsed: 6 });
    expect(small.checkInvariants()).toBe("");
    expect(small.kvTransfer!.releaseHeldKv("filler")).toBe(true);
    const decoded = await decoding;
    expect(fetched).toBe(false);
    expect(decoded.tokenIds).toEqual(whole.tokenIds.slice(1));
    expect(decoded.logprobs).toEqual(whole.logprobs.slice(1));
    expect(decoded.usage).toMatchObject({ promptTokens: 40, completionTokens: 6 });
    await expectIdle(small);
  });
});
