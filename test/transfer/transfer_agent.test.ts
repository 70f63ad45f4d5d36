import { afterEach, describe, expect, it } from "vitest";
import { seededRandom } from "../../src/util/seeded_random.ts";
import {
  TransferAgent,
  TransferError,
  type BlockDescriptor,
  type TransferAgentOptions,
} from "../../src/transfer/transfer_agent.ts";
import { StallingProxy } from "./stalling_proxy.ts";

const MiB = 1024 * 1024;
const open: { close(): Promise<void> }[] = [];

function agent(options: TransferAgentOptions): TransferAgent {
  const a = TransferAgent.create(options);
  open.push(a);
  return a;
}

afterEach(async () => {
  await Promise.all(open.splice(0).map((x) => x.close()));
});

/** Bytes no two offsets of which are likely to agree with another buffer's by chance. */
function patterned(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** A prefill worker ("prefill") with `bytes` of patterned memory and a decode worker ("decode") with empty memory. */
function pair(bytes: number, localBytes = bytes, options: Partial<TransferAgentOptions> = {}) {
  const prefill = agent({ name: "prefill", ...options });
  const decode = agent({ name: "decode", ...options });
  const source = patterned(bytes, 7);
  const destination = Buffer.alloc(localBytes);
  const remote = prefill.registerMemory(source);
  const local = decode.registerMemory(destination);
  decode.loadRemoteMetadata(prefill.metadata());
  return { prefill, decode, source, destination, remote, local };
}

/** A prefill agent reached only through a StallingProxy that forwards `forwardBytes` of its answers, and a decode agent that has loaded its metadata. */
async function pairBehindProxy(forwardBytes: number, bytes: number, source: Buffer = Buffer.alloc(bytes), decodeOptions: Partial<TransferAgentOptions> = {}) {
  let prefillPort = 0;
  const proxy = await StallingProxy.start({ targetPort: () => prefillPort, forwardBytes });
  open.push(proxy);
  const prefill = agent({ name: "prefill", advertisePort: proxy.port });
  prefillPort = prefill.listenPort;
  const decode = agent({ name: "decode", ...decodeOptions });
  const destination = Buffer.alloc(bytes);
  const remote = prefill.registerMemory(source);
  const local = decode.registerMemory(destination);
  decode.loadRemoteMetadata(prefill.metadata());
  return { proxy, prefill, decode, destination, remote, local };
}

type Block = { from: number; to: number; length: number };

/** Reads `blocks` and checks every destination byte: copied where a block landed, zero elsewhere. */
async function readAndCompare(blocks: Block[], bytes: number, localBytes: number, options: Partial<TransferAgentOptions> = {}) {
  const { decode, source, destination, remote, local } = pair(bytes, localBytes, options);
  const remoteDescs: BlockDescriptor[] = blocks.map((b) => ({ region: remote.id, offset: b.from, length: b.length }));
  const localDescs: BlockDescriptor[] = blocks.map((b) => ({ region: local.id, offset: b.to, length: b.length }));
  const total = blocks.reduce((s, b) => s + b.length, 0);
  await expect(decode.read("prefill", remoteDescs, localDescs)).resolves.toEqual({ bytes: total });
  const expected = Buffer.alloc(localBytes);
  for (const b of blocks) source.copy(expected, b.to, b.from, b.from + b.length);
  expect(destination.equals(expected)).toBe(true);
}

describe("transfer agent over TCP", () => {
  it("reads a single 1-byte block", async () => {
    await readAndCompare([{ from: 5, to: 3, length: 1 }], 16, 16);
  });

  it("reads an odd number of 4097-byte blocks into a shuffled layout", async () => {
    const n = 7;
    const order = [3, 0, 6, 1, 5, 2, 4];
    const blocks = order.map((slot, i) => ({ from: i * 4097, to: slot * 4097, length: 4097 }));
    await readAndCompare(blocks, n * 4097, n * 4097);
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
    // 64 KiB chunks and 256 KiB ahead: about 160 chunks, 4 in flight at a time.
    await readAndCompare(blocks, 11 * MiB, 13 * MiB, { chunkBytes: 64 * 1024, maxInflightBytes: 256 * 1024 });
  });

  it("reads block lists (offsets as a typed array or an array) like the same descriptors one by one", async () => {
    const blockBytes = 4096;
    const order = [5, 0, 7, 2, 6, 1, 4, 3];
    const { decode, source, destination, remote, local } = pair(order.length * blockBytes);
    const from = new Float64Array(order.map((_, i) => i * blockBytes));
    const to = new Uint32Array(order.map((slot) => slot * blockBytes));
    await expect(
      decode.read("prefill", { region: remote.id, offsets: from, length: blockBytes }, { region: local.id, offsets: to, length: blockBytes }),
    ).resolves.toEqual({ bytes: order.length * blockBytes });
    order.forEach((slot, i) => {
      expect(destination.subarray(slot * blockBytes, (slot + 1) * blockBytes).equals(source.subarray(i * blockBytes, (i + 1) * blockBytes))).toBe(true);
    });
    destination.fill(0);
    await decode.read("prefill", { region: remote.id, offsets: [...from], length: blockBytes }, { region: local.id, offsets: [...to], length: blockBytes });
    expect(destination.subarray(5 * blockBytes, 6 * blockBytes).equals(source.subarray(0, blockBytes))).toBe(true);
    expect(() =>
      decode.postRead("prefill", { region: remote.id, offsets: [0.5], length: 1 }, { region: local.id, offsets: [0], length: 1 }),
    ).toThrow(/remoteDescs\.offsets\[0\] must be a non-negative integer/);
    expect(() =>
      decode.postRead("prefill", { region: remote.id, offsets: [order.length * blockBytes], length: 1 }, { region: local.id, offsets: [0], length: 1 }),
    ).toThrow(/runs past the end of region/);
  });

  it("reads blocks addressed by the addresses in the peer's metadata", async () => {
    const { decode, source, destination, remote, local } = pair(10_000);
    await decode.read(
      "prefill",
      [{ address: remote.address + 100n, length: 5000 }],
      [{ address: local.address + 7n, length: 5000 }],
    );
    expect(destination.subarray(7, 5007).equals(source.subarray(100, 5100))).toBe(true);
  });

  it("runs concurrent reads from two peers and many to one peer, each byte-exact", async () => {
    const decode = agent({ name: "decode" });
    const peers = [agent({ name: "prefill-0" }), agent({ name: "prefill-1" })];
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

  it("sends notifications both ways, the reply over the connection the peer opened", async () => {
    const { prefill, decode } = pair(16);
    decode.notify("prefill", new Uint8Array([1, 2, 3]));
    const first = await prefill.nextNotification();
    expect(first).toMatchObject({ from: "decode" });
    expect([...first.bytes]).toEqual([1, 2, 3]);
    // prefill never loaded decode's metadata: it answers over decode's connection.
    prefill.notify("decode", "free blocks 1..8?");
    expect((await decode.nextNotification()).bytes.toString()).toBe("free blocks 1..8?");
    for (const text of ["a", "b", "c"]) decode.notify("prefill", text);
    const inOrder = [await prefill.nextNotification(), await prefill.nextNotification(), await prefill.nextNotification()];
    expect(inOrder.map((n) => n.bytes.toString())).toEqual(["a", "b", "c"]);
    expect(prefill.notifications()).toEqual([]);
  });

  it("refuses to notify an agent it neither knows nor is connected with", () => {
    const a = agent({ name: "a" });
    expect(() => a.notify("nobody", "x")).toThrow(/cannot notify agent 'nobody'/);
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

  it("the remote agent refuses a read of a region deregistered after its metadata was exported, and says so on both sides", async () => {
    const { prefill, decode, remote, local } = pair(8192);
    expect(prefill.deregisterMemory(remote)).toBe(true);
    const read = decode.read("prefill", [{ region: remote.id, length: 8192 }], [{ region: local.id, length: 8192 }]);
    await expect(read).rejects.toMatchObject({ code: "rejected", message: expect.stringMatching(/agent 'prefill' refused the read: .*names no registered region of agent 'prefill'/) });
    expect(prefill.stats()).toMatchObject({ readsRejected: 1, lastRejection: expect.stringMatching(/from agent 'decode'/) });
  });

  it("rejects a blob that is not agent metadata", () => {
    const a = agent({ name: "a" });
    expect(() => a.loadRemoteMetadata(Buffer.from("not metadata at all"))).toThrow(/not a Switchyard transfer agent metadata blob/);
    const truncated = agent({ name: "b" }).metadata().subarray(0, 20);
    expect(() => a.loadRemoteMetadata(truncated)).toThrow(/truncated/);
  });

  it("fails a read with 'closed' within the timeout when the peer closes mid-transfer", async () => {
    const { proxy, prefill, decode, remote, local } = await pairBehindProxy(3 * MiB + 100, 32 * MiB, patterned(32 * MiB, 3), { timeoutMs: 20_000 });
    const started = performance.now();
    const transfer = decode.postRead("prefill", [{ region: remote.id, length: 32 * MiB }], [{ region: local.id, length: 32 * MiB }]);
    await proxy.stalled;
    expect(transfer.status().state).toBe("pending");
    await prefill.close();
    await expect(transfer.done).rejects.toMatchObject({ code: "closed", message: expect.stringMatching(/agent 'prefill' .*(closed the connection|Connection reset by peer) \(read \d+ of 33554432 bytes\)/) });
    expect(transfer.status()).toMatchObject({ state: "error", code: "closed" });
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("fails a read with 'timeout' when the peer never answers, and the next read reconnects", async () => {
    const source = patterned(1024, 5);
    const { proxy, decode, destination, remote, local } = await pairBehindProxy(0, 1024, source);
    const started = performance.now();
    const read = decode.read("prefill", [{ region: remote.id, length: 1024 }], [{ region: local.id, length: 1024 }], { timeoutMs: 300 });
    await expect(read).rejects.toMatchObject({ code: "timeout", message: expect.stringMatching(/timed out after 300 ms/) });
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(3_000);
    // The silent connection was dropped: once the peer answers again, the same read reconnects.
    proxy.forwardBytes = Infinity;
    await decode.read("prefill", [{ region: remote.id, length: 1024 }], [{ region: local.id, length: 1024 }]);
    expect(destination.equals(source)).toBe(true);
  });

  it("fails a read at once with 'closed' when nothing listens at the peer's address", async () => {
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
    const { proxy, decode, remote, local } = await pairBehindProxy(0, 100);
    const abort = new AbortController();
    const read = decode.read("prefill", [{ region: remote.id, length: 100 }], [{ region: local.id, length: 100 }], { signal: abort.signal });
    await proxy.stalled.catch(() => {});
    abort.abort();
    await expect(read).rejects.toMatchObject({ code: "canceled" });
  });

  it("closing the reading agent fails its pending reads with 'closed'", async () => {
    const { decode, remote, local } = await pairBehindProxy(0, 100);
    const read = decode.read("prefill", [{ region: remote.id, length: 100 }], [{ region: local.id, length: 100 }]);
    await decode.close();
    await expect(read).rejects.toMatchObject({ code: "closed" });
    expect(() => decode.postRead("prefill", [{ region: remote.id, length: 1 }], [{ region: local.id, length: 1 }])).toThrow(/closed/);
  });
});
