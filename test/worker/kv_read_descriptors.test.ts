/**
 * The decode side's read of a remote prefill's blocks (kvReadDescriptors): the same bytes,
 * whatever form it takes. Host memory goes as descriptors with runs merged (TCP asks for each
 * descriptor apart), device memory as block lists (the CUDA IPC backend merges by itself).
 */
import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { KvTransferParamsSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import type { KvMemoryLayout, KvReservation } from "../../src/engine/engine.ts";
import type { BlockDescriptor, BlockList } from "../../src/transfer/transfer_agent.ts";
import { kvReadDescriptors } from "../../src/worker/disagg/kv_fetcher.ts";

const BLOCK = 64;
const REMOTE_BASE = 1n << 40n;
const LOCAL_REGION = 7;

/** Two layers' K and V areas of `blocks` blocks each, one after another. */
function layout(blocks: number, kind: "host" | "cuda" = "host"): KvMemoryLayout {
  const area = blocks * BLOCK;
  return {
    memory: { kind, address: 0n, length: 4 * area, deviceId: 0 },
    segments: [0, 1, 2, 3].map((s) => ({ offset: s * area, blockStride: BLOCK, blockBytes: BLOCK })),
  };
}

function params(remote: KvMemoryLayout, blockIds: number[], kind: "host" | "cuda", regionId: bigint) {
  return create(KvTransferParamsSchema, {
    engineId: "prefill-0",
    blockIds,
    numTokens: blockIds.length * 16,
    memoryAddress: REMOTE_BASE,
    memoryKind: kind,
    memoryRegionId: regionId,
    segments: remote.segments.map((s) => ({ offset: BigInt(s.offset), blockStride: BigInt(s.blockStride), blockBytes: s.blockBytes })),
  });
}

/** Every BLOCK-byte unit the read moves, as "remote address -> local offset". */
function units(remote: BlockDescriptor[] | BlockList, local: BlockDescriptor[] | BlockList): string[] {
  const spans = (d: BlockDescriptor[] | BlockList, base: bigint) =>
    "offsets" in d
      ? Array.from(d.offsets as Float64Array, (o) => ({ at: base + BigInt(o), length: d.length }))
      : d.map((x) => ({ at: "address" in x ? x.address : base + BigInt(x.offset ?? 0), length: x.length }));
  const expand = (list: { at: bigint; length: number }[]) => list.flatMap(({ at, length }) => Array.from({ length: length / BLOCK }, (_, i) => at + BigInt(i * BLOCK)));
  // A block list names the remote region, which starts at memoryAddress.
  const r = expand(spans(remote, REMOTE_BASE));
  const l = expand(spans(local, 0n));
  expect(r.length).toBe(l.length);
  return r.map((a, i) => `${a}->${l[i]}`);
}

/** What the read must move: each missing block, segment by segment. */
function expected(remote: KvMemoryLayout, ours: KvMemoryLayout, theirIds: number[], reservation: KvReservation): string[] {
  const out: string[] = [];
  remote.segments.forEach((theirs, s) => {
    for (let i = reservation.numCachedBlocks; i < reservation.blockIds.length; i++) {
      const from = REMOTE_BASE + BigInt(theirs.offset + theirIds[i] * theirs.blockStride);
      out.push(`${from}->${ours.segments[s].offset + reservation.blockIds[i] * ours.segments[s].blockStride}`);
    }
  });
  return out;
}

describe("kvReadDescriptors", () => {
  it("merges host blocks consecutive on both sides into one descriptor and skips prefix-cache hits", () => {
    const remote = layout(32);
    const ours = layout(16);
    const theirIds = [4, 5, 6, 9];
    const reservation = { blockIds: [0, 1, 2, 3], numCachedBlocks: 1 };
    const read = kvReadDescriptors(params(remote, theirIds, "host", 1n), ours, LOCAL_REGION, reservation);
    expect(Array.isArray(read.remote)).toBe(true);
    // Per segment: blocks 5, 6 -> 1, 2 merge; 9 -> 3 does not continue them.
    expect((read.remote as BlockDescriptor[]).length).toBe(4 * 2);
    expect(read.bytes).toBe(4 * 3 * BLOCK);
    expect(units(read.remote, read.local)).toEqual(expected(remote, ours, theirIds, reservation));
  });

  it("gives device memory as two block lists of one offset per block, naming the remote region", () => {
    const remote = layout(32, "cuda");
    const ours = layout(16, "cuda");
    const theirIds = [4, 5, 6, 9, 31];
    const reservation = { blockIds: [3, 0, 1, 2, 15], numCachedBlocks: 2 };
    const read = kvReadDescriptors(params(remote, theirIds, "cuda", 3n), ours, LOCAL_REGION, reservation);
    const remoteList = read.remote as BlockList;
    const localList = read.local as BlockList;
    expect(remoteList.region).toBe(3);
    expect(localList.region).toBe(LOCAL_REGION);
    expect(remoteList.offsets).toHaveLength(4 * 3);
    expect(localList.length).toBe(BLOCK);
    expect(read.bytes).toBe(4 * 3 * BLOCK);
    expect(units(read.remote, read.local)).toEqual(expected(remote, ours, theirIds, reservation));
  });

  it("addresses device blocks by memory_address when the sender named no region", () => {
    const remote = layout(8, "cuda");
    const ours = layout(8, "cuda");
    const reservation = { blockIds: [2, 3], numCachedBlocks: 0 };
    const read = kvReadDescriptors(params(remote, [6, 7], "cuda", 0n), ours, LOCAL_REGION, reservation);
    expect(Array.isArray(read.remote)).toBe(true);
    expect(units(read.remote, read.local)).toEqual(expected(remote, ours, [6, 7], reservation));
  });

  it("moves the same bytes in either form for random reservations", () => {
    let seed = 12345;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let round = 0; round < 50; round++) {
      const remote = layout(64, "cuda");
      const ours = layout(64, "cuda");
      const n = 1 + rand(12);
      const pick = () => Array.from({ length: n }, () => rand(64));
      const theirIds = pick();
      const reservation = { blockIds: pick(), numCachedBlocks: rand(n + 1) };
      const lists = kvReadDescriptors(params(remote, theirIds, "cuda", 1n), ours, LOCAL_REGION, reservation);
      const descriptors = kvReadDescriptors(params(remote, theirIds, "host", 1n), ours, LOCAL_REGION, reservation);
      const want = expected(remote, ours, theirIds, reservation);
      expect(units(lists.remote, lists.local)).toEqual(want);
      expect(units(descriptors.remote, descriptors.local)).toEqual(want);
      expect(lists.bytes).toBe(descriptors.bytes);
    }
  });
});
