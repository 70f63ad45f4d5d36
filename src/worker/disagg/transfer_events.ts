/**
 * What the worker's disaggregation code reports as it moves KV blocks, for metrics and tests.
 * Decode side: each fetch of a remote prefill's blocks succeeds or fails; prefill side: each
 * request whose blocks were held is released, for one reason.
 */
import type { TransferErrorCode } from "../../transfer/transfer_agent.ts";

/** Why held blocks were freed. */
export type ReleaseReason =
  /** The decode worker read them and notified. */
  | "notified"
  /** No decode worker notified within --kv-transfer-timeout. */
  | "timeout"
  /** The request finished with a stop: no decode follows. */
  | "stop"
  /** A Cancel named the request. */
  | "cancelled"
  /** The response carrying kv_transfer never reached the caller. */
  | "undelivered"
  /** The worker shut down. */
  | "shutdown";

export type FetchFailureReason = TransferErrorCode | "metadata";

export type KvTransferEvent =
  | { type: "fetched"; blocks: number; bytes: number; seconds: number }
  /** `recomputed`: the engine computes the prompt itself (false when the request was cancelled). */
  | { type: "fetch_failed"; reason: FetchFailureReason; recomputed: boolean }
  | { type: "released"; reason: ReleaseReason };

export type KvTransferListener = (event: KvTransferEvent) => void;

/** Listeners of KvTransferEvents; one that throws does not stop the others or the caller. */
export class KvTransferEvents {
  private readonly listeners = new Set<KvTransferListener>();

  subscribe(listener: KvTransferListener): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  emit(event: KvTransferEvent): void {
    for (const listener of this.listeners) {
      try {
        listener(event);
      } catch {
        // Metrics must never break a transfer.
      }
    }
  }
}
