/**
 * The transfer agent over TCP, its default backend: every backend's read cases (read_cases.ts),
 * then what TCP alone shows: block lists, notifications over the connection a peer opened,
 * metadata and deregistration errors, and a peer that dies or stalls mid-read, made on demand
 * by a StallingProxy between the agents.
 */
import { describe, expect, it } from "vitest";
import type { TransferAgentOptions } from "../../src/transfer/transfer_agent.ts";
import { patterned } from "./patterned.ts";
import { describeReadCases, expectNotificationsBothWays, MiB, testAgents } from "./read_cases.ts";
import { StallingProxy } from "./stalling_proxy.ts";

const agents = testAgents({ name: "TCP", agentOptions: {}, readsOverTcp: true });
const { own, agent, pair } = agents;

/** A prefill agent reached only through a StallingProxy that forwards `forwardBytes` of its answers, and a decode agent that has loaded its metadata. */
async function pairBehindProxy(forwardBytes: number, bytes: number, source: Buffer = Buffer.alloc(bytes), decodeOptions: Partial<TransferAgentOptions> = {}) {
  let prefillPort = 0;
  const proxy = own(await StallingProxy.start({ targetPort: () => prefillPort, forwardBytes }));
  const prefill = agent({ name: "prefill", advertisePort: proxy.port });
  prefillPort = prefill.listenPort;
  const decode = agent({ name: "decode", ...decodeOptions });
  const destination = Buffer.alloc(bytes);
  const remote = prefill.registerMemory(source);
  const local = decode.registerMemory(destination);
  decode.loadRemoteMetadata(prefill.metadata());
  return { proxy, prefill, decode, destination, remote, local };
}

describe("transfer agent over TCP", () => {
  describeReadCases(agents, async (bytes) => {
    const { proxy, decode, remote, local } = await pairBehindProxy(0, bytes);
    return { decode, wholeRegion: [[{ region: remote.id, length: bytes }], [{ region: local.id, length: bytes }]], holding: proxy.stalled };
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

  it("sends notifications both ways, the reply over the connection the peer opened", async () => {
    const { prefill, decode } = pair(16);
    // prefill never loaded decode's metadata: it answers over decode's connection.
    await expectNotificationsBothWays(prefill, decode);
    expect(prefill.notifications()).toEqual([]);
  });

  it("refuses to notify an agent it neither knows nor is connected with", () => {
    const a = agent({ name: "a" });
    expect(() => a.notify("nobody", "x")).toThrow(/cannot notify agent 'nobody'/);
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
});
