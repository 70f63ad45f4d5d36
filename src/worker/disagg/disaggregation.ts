/**
 * A worker's part in disaggregated serving, for an engine that can hold and import KV blocks
 * (Engine.kvTransfer). Whatever --disaggregation-mode says (that is routing information), such
 * a worker honours both flags of a GenerateRequest:
 *
 * - do_remote_decode (prefill side): the engine keeps the prompt's blocks when the request
 *   finishes, the final response carries kv_transfer, and the blocks are freed when the decode
 *   worker's notification names the request, when the hold times out, or at once when the
 *   request stopped (no decode follows) or its answer never left.
 * - do_remote_prefill (decode side): the engine reserves the prompt's blocks and this worker
 *   reads those it lacks from the prefill worker's agent (RemoteKvFetcher).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import type { DisaggregationParams, KvTransferParams } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { Engine, EngineKvTransfer, EngineRequest, FinishReason, HeldKv } from "../../engine/engine.ts";
import type { Logger } from "../../runtime/logger.ts";
import { HeldKvRegistry } from "./held_kv.ts";
import { RemoteKvFetcher } from "./kv_fetcher.ts";
import { checkKvTransferParams, heldKvTransferParams } from "./kv_transfer_params.ts";
import { KvTransferEndpoint, type KvTransferAgentOptions } from "./transfer_endpoint.ts";
import { KvTransferEvents, type ReleaseReason } from "./transfer_events.ts";

export const DEFAULT_KV_TRANSFER_TIMEOUT_MS = 30_000;

export class Disaggregation {
  readonly events = new KvTransferEvents();
  readonly endpoint: KvTransferEndpoint;
  private readonly engine: Engine;
  private readonly held: HeldKvRegistry;
  private readonly fetcher: RemoteKvFetcher;
  private lastBytesServed = 0;

  private constructor(
    private readonly workerId: string,
    engine: Engine & { kvTransfer: EngineKvTransfer },
    options: KvTransferAgentOptions,
    log: Logger,
  ) {
    const timeoutMs = options.timeoutMs ?? DEFAULT_KV_TRANSFER_TIMEOUT_MS;
    if (!(timeoutMs > 0)) throw new Error(`the KV transfer timeout must be positive, got ${timeoutMs} ms`);
    this.engine = engine;
    this.endpoint = KvTransferEndpoint.open(workerId, engine.kvTransfer, { ...options, timeoutMs });
    this.held = new HeldKvRegistry(engine.kvTransfer, timeoutMs, this.events, log);
    this.fetcher = new RemoteKvFetcher(this.endpoint, timeoutMs, this.events, log);
    void this.endpoint.pumpNotifications((n) => {
      const requestId = n.bytes.toString("utf8");
      if (!this.held.release(requestId, "notified")) log.debug(`${n.from} is done with the KV of ${requestId}, which was freed already`);
    });
  }

  /** Starts the transfer agent of a worker whose engine supports KV transfer; undefined for other engines. */
  static start(workerId: string, engine: Engine, options: KvTransferAgentOptions, log: Logger): Disaggregation | undefined {
    if (!engine.kvTransfer) return undefined;
    return new Disaggregation(workerId, engine as Engine & { kvTransfer: EngineKvTransfer }, options, log);
  }

  /** Requests whose blocks are held for a decode worker. */
  get numHeld(): number {
    return this.held.size;
  }

  /** Bytes peers have read from this worker's KV memory (the last count seen, once the agent closed). */
  get bytesServed(): number {
    if (!this.endpoint.isClosed) this.lastBytesServed = this.endpoint.agent.stats().bytesServed;
    return this.lastBytesServed;
  }

  /** Sets the engine request's side of `wire`; InvalidArgument when its parameters do not fit this engine. */
  prepare(wire: DisaggregationParams, request: EngineRequest): void {
    if (wire.doRemoteDecode && wire.doRemotePrefill) {
      throw new ConnectError("do_remote_decode and do_remote_prefill exclude each other: a worker either prefills for another or decodes from another", Code.InvalidArgument);
    }
    if (wire.doRemoteDecode) {
      request.holdKvForRemoteDecode = true;
      return;
    }
    const params = checkKvTransferParams(wire.kvTransfer, this.endpoint.layout, request.promptTokenIds.length, this.engine.blockSize);
    try {
      this.fetcher.peer(params);
    } catch (err) {
      throw new ConnectError(`disaggregation.kv_transfer: ${(err as Error).message}`, Code.InvalidArgument, undefined, undefined, err);
    }
    const requestId = request.requestId;
    request.remotePrefill = {
      firstTokenId: wire.firstTokenId,
      fetchKv: (reservation, signal) => this.fetcher.fetch(requestId, params, reservation, signal),
    };
  }

  /**
   * The final output of a do_remote_decode request said which blocks the engine now holds:
   * returns their kv_transfer for the response, or undefined when the request stopped and
   * they were freed at once.
   */
  holdForDecode(request: EngineRequest, heldKv: HeldKv, finishReason: FinishReason | undefined): KvTransferParams | undefined {
    const { requestId } = request;
    this.held.hold(requestId, heldKv.blockIds.length);
    if (finishReason === "stop") {
      this.held.release(requestId, "stop");
      return undefined;
    }
    return heldKvTransferParams(this.endpoint, this.workerId, requestId, request.promptTokenIds, this.engine.blockSize, heldKv);
  }

  /** Frees the blocks held for `requestId`; false when none are. */
  release(requestId: string, reason: ReleaseReason): boolean {
    return this.held.release(requestId, reason);
  }

  /** Resolves once no blocks are held (read, or timed out), or after `timeoutMs`. */
  whenNoneHeld(timeoutMs: number): Promise<void> {
    return this.held.whenEmpty(timeoutMs);
  }

  /** Closes the agent, failing reads in flight, then frees what is still held. */
  async close(): Promise<void> {
    await this.endpoint.close();
    this.held.releaseAll("shutdown");
  }
}

/**
 * Applies a GenerateRequest's disaggregation to the engine request: Unimplemented where the
 * engine cannot hold or import KV, InvalidArgument for parameters that do not fit it.
 */
export function applyDisaggregation(wire: DisaggregationParams | undefined, request: EngineRequest, disaggregation: Disaggregation | undefined, engineName: string): void {
  if (!wire || !(wire.doRemoteDecode || wire.doRemotePrefill)) return;
  if (!disaggregation) {
    throw new ConnectError(`this worker's ${engineName} engine cannot hold or import KV blocks, so it serves no disaggregated prefill or decode`, Code.Unimplemented);
  }
  disaggregation.prepare(wire, request);
}
