/**
 * The read cases every transfer backend passes, and the agents they run on. Each backend's test
 * file (transfer_agent.test.ts for TCP, ucx.test.ts for UCX) calls describeReadCases with its
 * agents and its way of making a peer that never answers; what only one backend does (how its
 * peers stall or die, its metadata, how an agent picks it) stays in that file.
 */
import { afterEach, describe, expect, it } from "vitest";
import { seededRandom } from "../../src/util/seeded_random.ts";
import {
  TransferAgent,
  TransferError,
  type BlockDescriptor,
  type TransferAgentOptions,
} from "../../src/transfer/transfer_agent.ts";
import { patterned } from "./patterned.ts";

export const MiB = 1024 * 1024;

export interface Backend {
  /** As the suite's title names it. */
  name: string;
  /** What both agents of a pair ask for: the backend preference and its settings. */
  agentOptions: Partial<TransferAgentOptions>;
  /** Whether the serving agent's TCP listener serves the reads (its chunksServed counts them) or must serve none. */
  readsOverTcp: boolean;
}

export type Block = { from: number; to: number; length: number };

/**
 * Registers, in the calling test file, an afterEach that closes everything opened since the
 * last test, and returns the ways to open things on `backend`.
 */
export function testAgents(backend: Backend) {
  const open: { close(): Promise<void> }[] = [];
  afterEach(async () => {
    // close() is called in the order things were opened (a peer process before its readers).
    await Promise.all(open.splice(0).map((x) => x.close()));
  });

  /** Closes `x` after the test. */
  function own<T extends { close(): Promise<void> }>(x: T): T {
    open.push(x);
    return x;
  }

  /** An agent with `options` alone, not the backend's: for agents that must not use it. */
  function agent(options: TransferAgentOptions): TransferAgent {
    return own(TransferAgent.create(options));
  }

  /** A prefill worker ("prefill") with `bytes` of patterned memory and a decode worker ("decode") with empty memory. */
  function pair(bytes: number, localBytes = bytes, options: Partial<TransferAgentOptions> = {}) {
    const prefill = agent({ name: "prefill", ...backend.agentOptions, ...options });
    const decode = agent({ name: "decode", ...backend.agentOptions, ...options });
    const source = patterned(bytes, 7);
    const destination = Buffer.alloc(localBytes);
    const remote = prefill.registerMemory(source);
    const local = decode.registerMemory(destination);
    decode.loadRemoteMetadata(prefill.metadata());
    return { prefill, decode, source, destination, remote, local };
  }

  /** Reads `blocks` and checks every destination byte: copied where a block landed, zero elsewhere. */
  async function readAndCompare(blocks: Block[], bytes: number, localBytes: number, options: Partial<TransferAgentOptions> = {}) {
    const { prefill, decode, source, destination, remote, local } = pair(bytes, localBytes, options);
    const remoteDescs: BlockDescriptor[] = blocks.map((b) => ({ region: remote.id, offset: b.from, length: b.length }));
    const localDescs: BlockDescriptor[] = blocks.map((b) => ({ region: local.id, offset: b.to, length: b.length }));
    const total = blocks.reduce((s, b) => s + b.length, 0);
    await expect(decode.read("prefill", remoteDescs, localDescs)).resolves.toEqual({ bytes: total });
    const expected = Buffer.alloc(localBytes);
    for (const b of blocks) source.copy(expected, b.to, b.from, b.from + b.length);
    expect(destination.equals(expected)).toBe(true);
    if (backend.readsOverTcp) expect(prefill.stats().chunksServed).toBeGreaterThan(0);
    else expect(prefill.stats().chunksServed).toBe(0);
  }

  return { backend, own, agent, pair, readAndCompare };
}

export type TestAgents = ReturnType<typeof testAgents>;

/** A decode agent that has loaded the metadata of "prefill", a peer that takes reads and answers none. */
export interface SilentPeer {
  decode: TransferAgent;
  /** The descriptors of a read of the peer's whole region into decode's. */
  wholeRegion: [BlockDescriptor[], BlockDescriptor[]];
  /** Settles once the peer holds a posted read unanswered. */
  holding: Promise<void>;
}

/** decode notifies prefill, prefill answers, then decode sends three that must arrive in order. */
export async function expectNotificationsBothWays(prefill: TransferAgent, decode: TransferAgent): Promise<void> {
  decode.notify("prefill", new Uint8Array([1, 2, 3]));
  const first = await prefill.nextNotification();
  expect(first).toMatchObject({ from: "decode" });
  expect([...first.bytes]).toEqual([1, 2, 3]);
  prefill.notify("decode", "free blocks 1..8?");
  expect((await decode.nextNotification()).bytes.toString()).toBe("free blocks 1..8?");
  for (const text of ["a", "b", "c"]) decode.notify("prefill", text);
  const inOrder = [await prefill.nextNotification(), await prefill.nextNotification(), await prefill.nextNotification()];
  expect(inOrder.map((n) => n.bytes.toString())).toEqual(["a", "b", "c"]);
}

/** The cases every backend passes, as a describe block in the caller's. */
export function describeReadCases(agents: TestAgents, silentPeer: (bytes: number) => Promise<SilentPeer>): void {
  const { backend, agent, pair, readAndCompare } = agents;

  describe(`reads over ${backend.name}`, () => {
    it("reads a single 1-byte block", async () => {
      await readAndCompare([{ from: 5, to: 3, length: 1 }], 16, 16);
    });

    it("reads an odd number of 4097-byte blocks into a shuffled layout", async () => {
      const order = [3, 0, 6, 1, 5, 2, 4];
      const blocks = order.map((slot, i) => ({ from: i * 4097, to: slot * 4097, length: 4097 }));
      await readAndCompare(blocks, order.length * 4097, order.length * 4097);
    });

    it("reads 1001 small blocks of random sizes and offsets in one transfer", async () => {
      const rand = seededRandom(11);
      const blocks: Block[] = [];
      let from = 0;
      let to = 0;
      for (let i = 0; i < 1001; i++) {
        const length = 1 + Math.floor(rand() * 300);
        from += Math.floor(rand() * 5);
        to += Math.floor(rand() * 5);
        blocks.push({ from, to, length });
        from += length;
        to += length;
      }
      await readAndCompare(blocks, from, to);
    });

    it("reads a few multi-MiB blocks split into many pipelined chunks", async () => {
      const blocks = [
        { from: 0, to: 9 * MiB + 3, length: 3 * MiB + 17 },
        { from: 3 * MiB + 17, to: 1, length: 5 * MiB },
        { from: 8 * MiB + 17, to: 5 * MiB + 2, length: 2 * MiB - 5 },
      ];
      // 64 KiB chunks (UCX gets) and 256 KiB ahead: about 160 chunks, 4 in flight at a time.
      await readAndCompare(blocks, 11 * MiB, 13 * MiB, { chunkBytes: 64 * 1024, maxInflightBytes: 256 * 1024 });
    });

    it("reads blocks addressed by the addresses in the peer's metadata", async () => {
      const { decode, source, destination, remote, local } = pair(10_000);
      await decode.read("prefill", [{ address: remote.address + 100n, length: 5000 }], [{ address: local.address + 7n, length: 5000 }]);
      expect(destination.subarray(7, 5007).equals(source.subarray(100, 5100))).toBe(true);
    });

    it("runs concurrent reads from two peers and many to one peer, each byte-exact", async () => {
      const decode = agent({ name: "decode", ...backend.agentOptions });
      const peers = [agent({ name: "prefill-0", ...backend.agentOptions }), agent({ name: "prefill-1", ...backend.agentOptions })];
      const sources = peers.map((p, i) => patterned(4 * MiB + i, 100 + i));
      const regions = peers.map((p, i) => p.registerMemory(sources[i]!));
      for (const p of peers) decode.loadRemoteMetadata(p.metadata());
      const destination = Buffer.alloc(16 * MiB);
      const local = decode.registerMemory(destination);
      // 16 reads of 1 MiB - 3 bytes each, alternating peers, all posted before any completes.
      const length = MiB - 3;
      const reads = Array.from({ length: 16 }, (_, i) => {
        const peer = i % 2;
        return decode.read(
          `prefill-${peer}`,
          [{ region: regions[peer]!.id, offset: (i >> 1) * 400_000, length }],
          [{ region: local.id, offset: i * MiB, length }],
        );
      });
      await Promise.all(reads);
      for (let i = 0; i < 16; i++) {
        const from = (i >> 1) * 400_000;
        expect(destination.subarray(i * MiB, i * MiB + length).equals(sources[i % 2]!.subarray(from, from + length))).toBe(true);
      }
    });

    it("delivers a read's notification to the remote agent after the read completes", async () => {
      const { prefill, decode, remote, local } = pair(4096);
      await decode.read("prefill", [{ region: remote.id, length: 4096 }], [{ region: local.id, length: 4096 }], {
        notification: "request-42 done",
      });
      const n = await prefill.nextNotification({ from: "decode" });
      expect(n.bytes.toString()).toBe("request-42 done");
    });

    it("rejects descriptors outside a registered region before anything is sent", () => {
      const { prefill, decode, remote, local } = pair(1000, 500);
      const cases: [BlockDescriptor[], BlockDescriptor[], RegExp][] = [
        [[{ region: remote.id, offset: 990, length: 11 }], [{ region: local.id, length: 11 }], /runs past the end of region \d+ of agent 'prefill'/],
        [[{ region: remote.id, length: 10 }], [{ region: local.id, offset: 495, length: 10 }], /runs past the end of region \d+ of this agent/],
        [[{ region: 999, length: 1 }], [{ region: local.id, length: 1 }], /names no registered region of agent 'prefill'/],
        [[{ address: 12345n, length: 1 }], [{ region: local.id, length: 1 }], /not inside any registered region/],
        [[{ region: remote.id, length: 10 }], [{ region: local.id, length: 9 }], /remote block of 10 bytes, local block of 9/],
        [[{ region: remote.id, length: 0 }], [{ region: local.id, length: 0 }], /is empty/],
        [[{ region: remote.id, length: 1 }], [], /one to one/],
      ];
      for (const [remoteDescs, localDescs, message] of cases) {
        let error: unknown;
        try {
          decode.postRead("prefill", remoteDescs, localDescs);
        } catch (e) {
          error = e;
        }
        expect(error).toBeInstanceOf(TransferError);
        expect((error as TransferError).code).toBe("invalid");
        expect((error as TransferError).message).toMatch(message);
      }
      expect(prefill.stats().chunksServed).toBe(0);
      expect(() => decode.postRead("elsewhere", [{ region: 1, length: 1 }], [{ region: local.id, length: 1 }])).toThrow(
        /no metadata loaded for agent 'elsewhere'/,
      );
    });

    it("fails a read at once with 'closed' when the peer agent was closed", async () => {
      const { prefill, decode, remote, local } = pair(64);
      await prefill.close();
      const started = performance.now();
      await expect(decode.read("prefill", [{ region: remote.id, length: 64 }], [{ region: local.id, length: 64 }])).rejects.toMatchObject({
        code: "closed",
        message: expect.stringMatching(/prefill/),
      });
      expect(performance.now() - started).toBeLessThan(2_000);
    });

    it("cancels a pending read when its AbortSignal fires", async () => {
      const { decode, wholeRegion, holding } = await silentPeer(4096);
      const abort = new AbortController();
      const read = decode.read("prefill", ...wholeRegion, { signal: abort.signal });
      await holding;
      abort.abort();
      await expect(read).rejects.toMatchObject({ code: "canceled" });
    });

    it("closing the reading agent fails its pending reads with 'closed'", async () => {
      const { decode, wholeRegion } = await silentPeer(4096);
      const read = decode.read("prefill", ...wholeRegion);
      await decode.close();
      await expect(read).rejects.toMatchObject({ code: "closed" });
      expect(() => decode.postRead("prefill", ...wholeRegion)).toThrow(TransferError);
      expect(() => decode.postRead("prefill", ...wholeRegion)).toThrow(/closed/);
    });
  });
}
