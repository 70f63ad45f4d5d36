/**
 * The transfer agent's UCX backend: the TCP suite's cases (odd block counts and sizes, many
 * descriptors, notifications, a peer that dies or stalls mid-read, cancel, close) with both
 * agents asking for UCX, plus how UCX and TCP agents meet. Skipped, saying so, where the addon
 * was built without libucx-dev. The agents use UCX's tcp transport: on one host it is the one
 * UCX 1.13 detects a dead peer over (shared memory needs ucxErrorMode "none", last case).
 * Peers that must stall or die run in a process of their own (ucx_peer.ts).
 */
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { seededRandom } from "../../src/util/seeded_random.ts";
import {
  TransferAgent,
  TransferError,
  backendsFromEnv,
  builtTransferBackends,
  type BlockDescriptor,
  type TransferAgentOptions,
} from "../../src/transfer/transfer_agent.ts";
import { patterned } from "./patterned.ts";

const MiB = 1024 * 1024;
// The cases below make UCX meet refused and reset connections on purpose; its own log would
// print each as an ERROR. Read by UCX when the addon loads (the next line), in this process
// and the peer processes it forks.
process.env.UCX_LOG_LEVEL ??= "fatal";
const hasUcx = builtTransferBackends().includes("ucx");
if (!hasUcx) {
  console.warn(
    "test/transfer/ucx.test.ts: the UCX cases are skipped: the transfer addon was built without UCX " +
      "(apt-get install libucx-dev, then npm install)",
  );
}

/** Both agents of a pair read over UCX's tcp transport, falling back to TCP for peers without UCX. */
const UCX: Partial<TransferAgentOptions> = { backends: ["ucx", "tcp"], ucxTransports: "tcp" };

const open: { close(): Promise<void> }[] = [];
const children: ChildProcess[] = [];

function agent(options: TransferAgentOptions): TransferAgent {
  const a = TransferAgent.create(options);
  open.push(a);
  return a;
}

afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
  await Promise.all(open.splice(0).map((x) => x.close()));
});

function pair(bytes: number, localBytes = bytes, options: Partial<TransferAgentOptions> = {}) {
  const prefill = agent({ name: "prefill", ...UCX, ...options });
  const decode = agent({ name: "decode", ...UCX, ...options });
  const source = patterned(bytes, 7);
  const destination = Buffer.alloc(localBytes);
  const remote = prefill.registerMemory(source);
  const local = decode.registerMemory(destination);
  decode.loadRemoteMetadata(prefill.metadata());
  return { prefill, decode, source, destination, remote, local };
}

type Block = { from: number; to: number; length: number };

/** Reads `blocks` over UCX and checks every destination byte: copied where a block landed, zero elsewhere. */
async function readAndCompare(blocks: Block[], bytes: number, localBytes: number, options: Partial<TransferAgentOptions> = {}) {
  const { prefill, decode, source, destination, remote, local } = pair(bytes, localBytes, options);
  const remoteDescs: BlockDescriptor[] = blocks.map((b) => ({ region: remote.id, offset: b.from, length: b.length }));
  const localDescs: BlockDescriptor[] = blocks.map((b) => ({ region: local.id, offset: b.to, length: b.length }));
  const total = blocks.reduce((s, b) => s + b.length, 0);
  await expect(decode.read("prefill", remoteDescs, localDescs)).resolves.toEqual({ bytes: total });
  const expected = Buffer.alloc(localBytes);
  for (const b of blocks) source.copy(expected, b.to, b.from, b.from + b.length);
  expect(destination.equals(expected)).toBe(true);
  // Nothing went over TCP: the serving agent's TCP listener served no chunk.
  expect(prefill.stats().chunksServed).toBe(0);
}

/** A prefill agent in its own process (ucx_peer.ts) serving `bytes` of patterned(bytes, seed). */
async function startUcxPeer(bytes: number, seed: number): Promise<{ child: ChildProcess; metadata: Buffer; region: number }> {
  const script = fileURLToPath(new URL("./ucx_peer.ts", import.meta.url));
  const child = fork(script, [String(bytes), String(seed)], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  children.push(child);
  const ready = once(child, "message") as Promise<[{ metadata: string; region: number }]>;
  const exited = once(child, "exit").then(([code, signal]) => {
    throw new Error(`the UCX peer process exited before it was ready (code ${code}, signal ${signal})`);
  });
  const [message] = await Promise.race([ready, exited]);
  return { child, metadata: Buffer.from(message.metadata, "base64"), region: message.region };
}

/** A decode agent in this process that has loaded the metadata of a UCX peer process. */
async function decodeWithPeer(bytes: number, options: Partial<TransferAgentOptions> = {}) {
  const peer = await startUcxPeer(bytes, 9);
  const decode = agent({ name: "decode", ...UCX, ...options });
  const destination = Buffer.alloc(bytes);
  const local = decode.registerMemory(destination);
  decode.loadRemoteMetadata(peer.metadata);
  const whole = (length = bytes) =>
    [[{ region: peer.region, length }], [{ region: local.id, length }]] as [BlockDescriptor[], BlockDescriptor[]];
  return { ...peer, decode, destination, local, whole };
}

describe("choosing the UCX backend", () => {
  it("reads SWITCHYARD_TRANSFER_BACKENDS as a preference list and names what is wrong with a bad one", () => {
    expect(backendsFromEnv({})).toBeUndefined();
    expect(backendsFromEnv({ SWITCHYARD_TRANSFER_BACKENDS: " ucx, tcp " })).toEqual(["ucx", "tcp"]);
    expect(() => backendsFromEnv({ SWITCHYARD_TRANSFER_BACKENDS: "ucx,rdma" })).toThrow(/SWITCHYARD_TRANSFER_BACKENDS must be .*got 'ucx,rdma'/);
  });

  it("lists TCP among the built backends and refuses an unknown one", () => {
    expect(builtTransferBackends()).toContain("tcp");
    expect(() => agent({ name: "a", backends: ["rdma" as "tcp"] })).toThrow(/unknown transfer backend 'rdma'/);
  });

  it.runIf(!hasUcx)("refuses UCX with a clear message where the addon was built without it", () => {
    expect(() => agent({ name: "a", backends: ["ucx", "tcp"] })).toThrow(/no UCX backend: libucx-dev was not installed/);
  });

  it("keeps TCP the only backend of an agent that does not ask for UCX, with metadata agents built before UCX read", () => {
    const a = agent({ name: "a" });
    expect(a.backends).not.toContain("ucx");
    a.registerMemory(Buffer.alloc(16));
    // Magic "SYAM", then version 1: no backend sections.
    expect(a.metadata().readUInt32LE(4)).toBe(1);
  });
});

describe.skipIf(!hasUcx)("transfer agent over UCX", () => {
  it("runs UCX beside TCP when asked, and its metadata carries a UCX section that TCP-only agents still load", async () => {
    const ucxAgent = agent({ name: "prefill", ...UCX });
    expect(ucxAgent.backends).toEqual(expect.arrayContaining(["tcp", "ucx"]));
    const source = patterned(5000, 1);
    const remote = ucxAgent.registerMemory(source);
    expect(ucxAgent.metadata().readUInt32LE(4)).toBe(2);
    // A TCP-only agent reads the same metadata and reads over TCP.
    const tcpAgent = agent({ name: "decode" });
    const destination = Buffer.alloc(5000);
    const local = tcpAgent.registerMemory(destination);
    tcpAgent.loadRemoteMetadata(ucxAgent.metadata());
    await tcpAgent.read("prefill", [{ region: remote.id, length: 5000 }], [{ region: local.id, length: 5000 }]);
    expect(destination.equals(source)).toBe(true);
    expect(ucxAgent.stats().chunksServed).toBeGreaterThan(0);
  });

  it("fails to start, naming the transports, when UCX has none of those asked for", () => {
    expect(() => agent({ name: "a", backends: ["ucx"], ucxTransports: "no-such-transport" })).toThrow(
      /cannot start UCX with transports 'no-such-transport'|UCX rejects transports 'no-such-transport'/,
    );
  });

  it("a UCX agent reads from a TCP-only peer over TCP, and one that allows only UCX refuses to", async () => {
    const prefill = agent({ name: "prefill" });
    const source = patterned(3000, 2);
    const remote = prefill.registerMemory(source);
    const decode = agent({ name: "decode", ...UCX });
    const onlyUcx = agent({ name: "strict", backends: ["ucx"], ucxTransports: "tcp" });
    const destination = Buffer.alloc(3000);
    const local = decode.registerMemory(destination);
    const strictLocal = onlyUcx.registerMemory(Buffer.alloc(3000));
    decode.loadRemoteMetadata(prefill.metadata());
    onlyUcx.loadRemoteMetadata(prefill.metadata());
    await decode.read("prefill", [{ region: remote.id, length: 3000 }], [{ region: local.id, length: 3000 }]);
    expect(destination.equals(source)).toBe(true);
    expect(() => onlyUcx.postRead("prefill", [{ region: remote.id, length: 3000 }], [{ region: strictLocal.id, length: 3000 }])).toThrow(
      /no backend of agent 'strict' reads these blocks/,
    );
  });

  it("reads a single 1-byte block", async () => {
    await readAndCompare([{ from: 5, to: 3, length: 1 }], 16, 16);
  });

  it("reads an odd number of 4097-byte blocks into a shuffled layout", async () => {
    const order = [3, 0, 6, 1, 5, 2, 4];
    const blocks = order.map((slot, i) => ({ from: i * 4097, to: slot * 4097, length: 4097 }));
    await readAndCompare(blocks, 7 * 4097, 7 * 4097);
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

  it("reads a few multi-MiB blocks split into many pipelined gets", async () => {
    const blocks = [
      { from: 0, to: 9 * MiB + 3, length: 3 * MiB + 17 },
      { from: 3 * MiB + 17, to: 1, length: 5 * MiB },
      { from: 8 * MiB + 17, to: 5 * MiB + 2, length: 2 * MiB - 5 },
    ];
    // 64 KiB gets and 256 KiB in flight: about 160 gets, 4 outstanding at a time.
    await readAndCompare(blocks, 11 * MiB, 13 * MiB, { chunkBytes: 64 * 1024, maxInflightBytes: 256 * 1024 });
  });

  it("reads blocks addressed by the addresses in the peer's metadata", async () => {
    const { decode, source, destination, remote, local } = pair(10_000);
    await decode.read("prefill", [{ address: remote.address + 100n, length: 5000 }], [{ address: local.address + 7n, length: 5000 }]);
    expect(destination.subarray(7, 5007).equals(source.subarray(100, 5100))).toBe(true);
  });

  it("runs concurrent reads from two peers and many to one peer, each byte-exact", async () => {
    const decode = agent({ name: "decode", ...UCX });
    const peers = [agent({ name: "prefill-0", ...UCX }), agent({ name: "prefill-1", ...UCX })];
    const sources = peers.map((p, i) => patterned(4 * MiB + i, 100 + i));
    const regions = peers.map((p, i) => p.registerMemory(sources[i]!));
    for (const p of peers) decode.loadRemoteMetadata(p.metadata());
    const destination = Buffer.alloc(16 * MiB);
    const local = decode.registerMemory(destination);
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

  it("sends notifications both ways over UCX, in order, up to 1 MiB", async () => {
    const { prefill, decode } = pair(16);
    prefill.loadRemoteMetadata(decode.metadata());
    decode.notify("prefill", new Uint8Array([1, 2, 3]));
    const first = await prefill.nextNotification();
    expect(first).toMatchObject({ from: "decode" });
    expect([...first.bytes]).toEqual([1, 2, 3]);
    prefill.notify("decode", "free blocks 1..8?");
    expect((await decode.nextNotification()).bytes.toString()).toBe("free blocks 1..8?");
    for (const text of ["a", "b", "c"]) decode.notify("prefill", text);
    const inOrder = [await prefill.nextNotification(), await prefill.nextNotification(), await prefill.nextNotification()];
    expect(inOrder.map((n) => n.bytes.toString())).toEqual(["a", "b", "c"]);
    const big = patterned(MiB, 4);
    decode.notify("prefill", big);
    expect((await prefill.nextNotification()).bytes.equals(big)).toBe(true);
    expect(() => decode.notify("prefill", Buffer.alloc(MiB + 1))).toThrow(/at most 1048576 bytes/);
    // Neither agent served a TCP read, and none of this needed a TCP connection.
    expect(prefill.stats().chunksServed + decode.stats().chunksServed).toBe(0);
  });

  it("rejects descriptors outside a registered region before anything is sent", () => {
    const { decode, remote, local } = pair(1000, 500);
    expect(() => decode.postRead("prefill", [{ region: remote.id, offset: 990, length: 11 }], [{ region: local.id, length: 11 }])).toThrow(
      /runs past the end of region \d+ of agent 'prefill'/,
    );
    expect(() => decode.postRead("prefill", [{ region: remote.id, length: 10 }], [{ region: local.id, offset: 495, length: 10 }])).toThrow(
      /runs past the end of region \d+ of this agent/,
    );
  });

  it("fails a read with 'closed' when the peer's process dies mid-read, well within the timeout", async () => {
    const { child, decode, whole } = await decodeWithPeer(32 * MiB, { timeoutMs: 20_000 });
    await decode.read("prefill", ...whole(4096)); // the endpoint is up: the failure below is the peer's death
    // Stopped, the peer answers nothing: the read is certainly still in flight when it dies.
    child.kill("SIGSTOP");
    const started = performance.now();
    const transfer = decode.postRead("prefill", ...whole());
    expect(transfer.status().state).toBe("pending");
    child.kill("SIGKILL");
    await expect(transfer.done).rejects.toMatchObject({ code: "closed", message: expect.stringMatching(/agent 'prefill'.*\(read \d+ of 33554432 bytes\)/) });
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it("fails a read with 'timeout' when the peer stops answering, and the next read reconnects", async () => {
    const { child, decode, destination, whole } = await decodeWithPeer(1 * MiB);
    child.kill("SIGSTOP");
    const started = performance.now();
    const read = decode.read("prefill", ...whole(), { timeoutMs: 300 });
    await expect(read).rejects.toMatchObject({ code: "timeout", message: expect.stringMatching(/over UCX timed out after 300 ms/) });
    const elapsed = performance.now() - started;
    expect(elapsed).toBeGreaterThanOrEqual(290);
    expect(elapsed).toBeLessThan(3_000);
    // The silent endpoint was dropped: once the peer runs again, the same read opens a new one.
    child.kill("SIGCONT");
    await decode.read("prefill", ...whole());
    expect(destination.equals(patterned(1 * MiB, 9))).toBe(true);
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
    const { child, decode, whole } = await decodeWithPeer(4096);
    child.kill("SIGSTOP");
    const abort = new AbortController();
    const read = decode.read("prefill", ...whole(), { signal: abort.signal });
    abort.abort();
    await expect(read).rejects.toMatchObject({ code: "canceled" });
  });

  it("closing the reading agent fails its pending reads with 'closed'", async () => {
    const { child, decode, whole } = await decodeWithPeer(4096);
    child.kill("SIGSTOP");
    const read = decode.read("prefill", ...whole());
    await decode.close();
    await expect(read).rejects.toMatchObject({ code: "closed" });
    expect(() => decode.postRead("prefill", ...whole())).toThrow(TransferError);
  });

  it("reads over shared memory with error handling mode 'none'", async () => {
    const blocks = [3, 0, 2, 1].map((slot, i) => ({ from: i * 65_537, to: slot * 65_537, length: 65_537 }));
    await readAndCompare(blocks, 4 * 65_537, 4 * 65_537, { ucxTransports: "sm,self", ucxErrorMode: "none" });
  });
});
