/**
 * What the frontend sees of routing: hand it a GenerateRequest (token ids and sampling
 * parameters) and get back the worker's stream. Which worker, and how (round-robin, random,
 * KV-aware, disaggregated, with migration), is the router's business.
 */
import type { GenerateRequest, GenerateResponse } from "../../gen/switchyard/worker/v1/worker_pb.ts";

export interface ModelCard {
  /** The served model name clients put in `model`. */
  name: string;
  /** Folder with tokenizer.json and tokenizer_config.json (and config.json). */
  path: string;
  maxModelLen: number;
  blockSize: number;
}

/** A worker the router can send requests to, as /health reports it. */
export interface InstanceInfo {
  id: string;
  url: string;
  model: string;
  /** agg, prefill or decode (disaggregated serving). */
  mode: string;
  inFlight: number;
}

export interface Router {
  /** Models with at least one live worker. */
  models(): ModelCard[];
  /** The live workers. */
  instances(): InstanceInfo[];
  /** Tells `listener` of every model card learned later (from discovery), e.g. to warm its tokenizer. */
  onModelCard?(listener: (card: ModelCard) => void): void;
  /**
   * Streams the worker's responses for one request. Throws RouterError when no worker can take
   * it, and ConnectError (from the worker) for a request the worker rejects. Aborting `signal`
   * cancels the request on the worker.
   */
  generate(request: GenerateRequest, signal: AbortSignal): AsyncIterable<GenerateResponse>;
  close(): Promise<void>;
}

export type RouterErrorCode = "no_workers" | "all_busy" | "unknown_model";

export class RouterError extends Error {
  constructor(
    readonly code: RouterErrorCode,
    message: string,
    /** For all_busy: when the client may try again. */
    readonly retryAfterSeconds?: number,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "RouterError";
  }
}
