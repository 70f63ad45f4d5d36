/**
 * A worker as the router knows it: where it listens, a Connect client for it, what it serves
 * (from GetInfo) and the requests this router has sent it and not yet seen finish.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { GuardedHttp2SessionManager } from "../runtime/guarded_session_manager.ts";
import { create } from "@bufbuild/protobuf";
import {
  GetInfoRequestSchema,
  WorkerService,
  type GetInfoResponse,
} from "../../gen/switchyard/worker/v1/worker_pb.ts";

export type WorkerClient = Client<typeof WorkerService>;

export interface WorkerHandle {
  /** The worker's own id (GetInfo.worker_id), stable for its lifetime. */
  readonly id: string;
  readonly url: string;
  readonly client: WorkerClient;
  info: GetInfoResponse;
  /** Requests routed here and not finished, as the router counts them. */
  inFlight: number;
}

export function createWorkerClient(url: string): WorkerClient {
  // gRPC over HTTP/2 with one multiplexed connection per worker; idle pings keep it warm and
  // surface a dead peer quickly.
  const sessionManager = new GuardedHttp2SessionManager(url, {
    pingIntervalMs: 10_000,
    pingTimeoutMs: 5_000,
    idleConnectionTimeoutMs: 60_000,
  });
  const transport = createGrpcTransport({ baseUrl: url, sessionManager });
  return createClient(WorkerService, transport);
}

/** Connects to a worker and asks what it serves. */
export async function connectWorker(url: string, timeoutMs = 10_000): Promise<WorkerHandle> {
  const client = createWorkerClient(url);
  try {
    const info = await client.getInfo(create(GetInfoRequestSchema, {}), { timeoutMs });
    return { id: info.workerId, url, client, info, inFlight: 0 };
  } catch (err) {
    throw new Error(`worker at ${url} did not answer GetInfo`, { cause: err });
  }
}
