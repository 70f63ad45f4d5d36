/**
 * Decode side: reads the blocks of a remote prefill that this engine lacks (those after its
 * own prefix-cache hits) from the prefill worker's agent into the blocks the engine reserved,
 * and lets the prefill worker know it is done with them, so it frees them. A failure rejects
 * the engine's fetchKv, which makes the engine compute the prompt itself.
 *
 * Block i of segment s is `blockBytes` at `offset + blockId · blockStride`: remotely from the
 * prefill worker's memory_address, locally from the start of the registered region.
 */
import type { KvTransferParams } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { KvMemoryLayout, KvReservation } from "../../engine/engine.ts";
import type { Logger } from "../../runtime/logger.ts";
import { TransferError, type BlockDescriptor, type BlockList } from "../../transfer/transfer_agent.ts";
import type { KvTransferEndpoint } from "./transfer_endpoint.ts";
import type { FetchFailureReason, KvTransferEvents } from "./transfer_events.ts";

export class KvFetchError extends Error {
  constructor(
    readonly reason: FetchFailureReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "KvFetchError";
  }
}

export class RemoteKvFetcher {
  /** The metadata last loaded per prefill engine id, to reload only when it changed (a restart). */
  private readonly loadedMetadata = new Map<string, { blob: Uint8Array; peer: string }>();

  constructor(
    private readonly endpoint: KvTransferEndpoint,
    private readonly timeoutMs: number,
    private readonly events: KvTransferEvents,
    private readonly log: Logger,
  ) {}

  async fetch(requestId: string, params: KvTransferParams, reservation: KvReservation, signal: AbortSignal): Promise<void> {
    const started = performance.now();
    const numBlocks = reservation.blockIds.length - reservation.numCachedBlocks;
    if (numBlocks <= 0) {
      // Everything hit this engine's prefix cache: only the prefill worker's blocks are to free.
      try {
        this.notifyQuietly(this.peer(params), params.requestId);
      } catch (err) {
        this.log.debug(`could not tell ${params.engineId} to free the blocks of ${params.requestId}: ${(err as Error).message}`);
      }
      return;
    }
    let peer: string | undefined;
    try {
      peer = this.peer(params);
      const { remote, local, bytes } = kvReadDescriptors(params, this.endpoint.layout, this.endpoint.region.id, reservation);
      await this.endpoint.agent.read(peer, remote, local, { notification: params.requestId, timeoutMs: this.timeoutMs, signal });
      this.events.emit({ type: "fetched", blocks: numBlocks, bytes, seconds: (performance.now() - started) / 1000 });
    } catch (err) {
      const reason: FetchFailureReason = err instanceof KvFetchError ? err.reason : err instanceof TransferError ? err.code : "system";
      const recomputed = !signal.aborted;
      this.events.emit({ type: "fetch_failed", reason, recomputed });
      const what = `request ${requestId}: reading ${numBlocks} KV blocks from ${params.engineId} at ${params.agentAddress} failed`;
      if (recomputed) this.log.warn(`${what}; computing the prompt here instead`, err);
      else this.log.debug(`${what}: the request was cancelled`);
      // The prefill worker would otherwise keep the blocks until its timeout.
      if (peer !== undefined) this.notifyQuietly(peer, params.requestId);
      throw err instanceof KvFetchError ? err : new KvFetchError(reason, what, { cause: err });
    }
  }

  /**
   * Loads the prefill worker's metadata unless the same blob is loaded already; returns its
   * agent's name, which must be engine_id. Throws KvFetchError("metadata") for a blob that is
   * not agent metadata, or another agent's.
   */
  peer(params: KvTransferParams): string {
    const known = this.loadedMetadata.get(params.engineId);
    if (known && Buffer.from(known.blob).equals(params.agentMetadata)) return known.peer;
    let peer: string;
    try {
      peer = this.endpoint.agent.loadRemoteMetadata(params.agentMetadata);
    } catch (err) {
      throw new KvFetchError("metadata", `the agent_metadata of ${params.engineId} does not load: ${(err as Error).message}`, { cause: err });
    }
    if (peer !== params.engineId) {
      throw new KvFetchError("metadata", `the agent_metadata describes agent '${peer}', but engine_id is '${params.engineId}'`);
    }
    this.loadedMetadata.set(params.engineId, { blob: params.agentMetadata, peer });
    return peer;
  }

  private notifyQuietly(peer: string, requestId: string): void {
    try {
      this.endpoint.agent.notify(peer, requestId);
    } catch (err) {
      this.log.debug(`could not tell ${peer} to free the blocks of ${requestId}: ${(err as Error).message}`);
    }
  }
}

export interface KvRead {
  remote: BlockDescriptor[] | BlockList;
  local: BlockDescriptor[] | BlockList;
  bytes: number;
}

/**
 * The read of the blocks a reservation lacks, segment after segment, from the prefill worker's
 * memory (`params`) into this worker's region `localRegion` laid out as `layout`. Device memory
 * goes as two block lists, one offset per block: the CUDA IPC backend merges consecutive blocks
 * itself, and a descriptor object per block would cost more than the copy (bench/RESULTS.md,
 * "CUDA IPC on one GPU"). Host memory goes as descriptors with the runs consecutive on both
 * sides merged, since TCP requests each descriptor apart; so does a sender that named no region.
 */
export function kvReadDescriptors(params: KvTransferParams, layout: KvMemoryLayout, localRegion: number, reservation: KvReservation): KvRead {
  const first = reservation.numCachedBlocks;
  const count = reservation.blockIds.length - first;
  const segments = layout.segments;
  const blockBytes = segments[0]?.blockBytes ?? 0;
  const bytes = segments.reduce((sum, s) => sum + s.blockBytes * count, 0);
  if (params.memoryKind === "cuda" && params.memoryRegionId > 0n && segments.every((s) => s.blockBytes === blockBytes)) {
    const remoteOffsets = new Float64Array(segments.length * count);
    const localOffsets = new Float64Array(segments.length * count);
    segments.forEach((ours, s) => {
      const theirs = params.segments[s];
      const theirOffset = Number(theirs.offset);
      const theirStride = Number(theirs.blockStride);
      for (let i = 0; i < count; i++) {
        remoteOffsets[s * count + i] = theirOffset + params.blockIds[first + i] * theirStride;
        localOffsets[s * count + i] = ours.offset + reservation.blockIds[first + i] * ours.blockStride;
      }
    });
    return {
      remote: { region: Number(params.memoryRegionId), offsets: remoteOffsets, length: blockBytes },
      local: { region: localRegion, offsets: localOffsets, length: blockBytes },
      bytes,
    };
  }
  const remote: (BlockDescriptor & { address: bigint })[] = [];
  const local: (BlockDescriptor & { region: number; offset: number })[] = [];
  const deviceId = params.deviceId;
  segments.forEach((ours, s) => {
    const theirs = params.segments[s];
    const length = ours.blockBytes;
    for (let i = first; i < reservation.blockIds.length; i++) {
      const address = params.memoryAddress + theirs.offset + BigInt(params.blockIds[i]) * theirs.blockStride;
      const offset = ours.offset + reservation.blockIds[i] * ours.blockStride;
      const lastRemote = remote.at(-1);
      const lastLocal = local.at(-1);
      if (lastRemote && lastLocal && lastRemote.address + BigInt(lastRemote.length) === address && lastLocal.offset + lastLocal.length === offset) {
        lastRemote.length += length;
        lastLocal.length += length;
      } else {
        remote.push({ address, length, deviceId });
        local.push({ region: localRegion, offset, length });
      }
    }
  });
  return { remote, local, bytes };
}
