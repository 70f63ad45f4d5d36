/**
 * The transfer agent's UCX backend: every backend's read cases (read_cases.ts) with both agents
 * asking for UCX, then what UCX alone shows: notifications up to 1 MiB, a peer that dies or
 * stalls mid-read, shared memory, and how UCX and TCP agents meet. Skipped, saying so, where
 * the addon was built without libucx-dev. The agents use UCX's tcp transport: on one host it
 * is the one UCX 1.13 detects a dead peer over (shared memory needs ucxErrorMode "none", last
 * case). Peers that must stall or die run in a process of their own (ucx_peer.ts).
 */
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import {
  backendsFromEnv,
  builtTransferBackends,
  type BlockDescriptor,
  type TransferAgentOptions,
} from "../../src/transfer/transfer_agent.ts";
import { patterned } from "./patterned.ts";
import { describeReadCases, expectNotificationsBothWays, MiB, testAgents } from "./read_cases.ts";

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
const agents = testAgents({ name: "UCX", agentOptions: UCX, readsOverTcp: false });
const { own, agent, pair, readAndCompare } = agents;

/** A prefill agent in its own process (ucx_peer.ts) serving `bytes` of patterned(bytes, seed). */
async function startUcxPeer(bytes: number, seed: number): Promise<{ child: ChildProcess; metadata: Buffer; region: number }> {
  const script = fileURLToPath(new URL("./ucx_peer.ts", import.meta.url));
  const child = fork(script, [String(bytes), String(seed)], { execArgv: ["--import", "tsx"], stdio: ["ignore", "inherit", "inherit", "ipc"] });
  // Owned before the agents that read from it, so it is killed before they close.
  own({
    close: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    },
  });
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
  describeReadCases(agents, async (bytes) => {
    const { child, decode, whole } = await decodeWithPeer(bytes);
    // Stopped before any read is posted, the peer holds every read from the start.
    child.kill("SIGSTOP");
    return { decode, wholeRegion: whole(), holding: Promise.resolve() };
  });

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

  it("sends notifications both ways over UCX, in order, up to 1 MiB", async () => {
    const { prefill, decode } = pair(16);
    prefill.loadRemoteMetadata(decode.metadata());
    await expectNotificationsBothWays(prefill, decode);
    const big = patterned(MiB, 4);
    decode.notify("prefill", big);
    expect((await prefill.nextNotification()).bytes.equals(big)).toBe(true);
    expect(() => decode.notify("prefill", Buffer.alloc(MiB + 1))).toThrow(/at most 1048576 bytes/);
    // Neither agent served a TCP read, and none of this needed a TCP connection.
    expect(prefill.stats().chunksServed + decode.stats().chunksServed).toBe(0);
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

  it("reads over shared memory with error handling mode 'none'", async () => {
    const blocks = [3, 0, 2, 1].map((slot, i) => ({ from: i * 65_537, to: slot * 65_537, length: 65_537 }));
    await readAndCompare(blocks, 4 * 65_537, 4 * 65_537, { ucxTransports: "sm,self", ucxErrorMode: "none" });
  });
});
