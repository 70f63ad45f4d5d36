/**
 * A frontend's selector when routing is done by a standalone `switchyard router`: each request
 * asks the shared RouterService for a worker (so every frontend routes with one view of the
 * caches and of the load), and reports when the request left the worker.
 *
 * If the router service cannot be reached, requests are not refused: the frontend falls back to
 * round-robin over the workers it knows, and says so in the log once per outage.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import {
  FindBestWorkerRequestSchema,
  MarkFinishedRequestSchema,
  RouterService,
} from "../../gen/switchyard/router/v1/router_pb.ts";
import { GuardedHttp2SessionManager } from "../runtime/guarded_session_manager.ts";
import type { Logger } from "../runtime/logger.ts";
import { RouterError } from "./router.ts";
import type { WorkerHandle } from "./worker_handle.ts";
import { RoundRobinSelector, type Selection, type SelectionRequest, type WorkerSelector } from "./worker_selector.ts";

export class RemoteSelector implements WorkerSelector {
  private readonly client: Client<typeof RouterService>;
  private readonly fallback = new RoundRobinSelector();
  /** MarkFinished calls in flight, so a migrated request's next FindBestWorker waits for them. */
  private readonly finishing = new Map<string, Promise<unknown>>();
  private outage = false;

  constructor(
    routerUrl: string,
    private readonly log: Logger,
    private readonly timeoutMs = 2000,
  ) {
    this.client = createClient(RouterService, createGrpcTransport({ baseUrl: routerUrl, sessionManager: new GuardedHttp2SessionManager(routerUrl) }));
  }

  async select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Promise<Selection> {
    await this.finishing.get(request.requestId);
    try {
      const answer = await this.client.findBestWorker(
        create(FindBestWorkerRequestSchema, {
          requestId: request.requestId,
          tokenIds: [...request.tokenIds],
          model: request.model ?? "",
          candidateWorkerIds: candidates.map((w) => w.id),
        }),
        { timeoutMs: this.timeoutMs },
      );
      this.outage = false;
      const worker = candidates.find((w) => w.id === answer.workerId);
      if (worker) return { worker, reason: `remote_${answer.reason}`, overlapBlocks: answer.overlapBlocks };
      // The router chose a worker this frontend does not know (yet) or just lost: release it.
      void this.markFinished(request.requestId);
      return { ...this.fallback.select(request, candidates), reason: "remote_unknown_worker" };
    } catch (err) {
      const code = err instanceof ConnectError ? err.code : Code.Unknown;
      if (code === Code.ResourceExhausted) {
        throw new RouterError("all_busy", (err as ConnectError).rawMessage, 1, { cause: err });
      }
      if (!this.outage) this.log.warn("the router service did not answer; routing round-robin until it does", err);
      this.outage = true;
      return { ...this.fallback.select(request, candidates), reason: "remote_unreachable" };
    }
  }

  requestFinished(requestId: string): void {
    void this.markFinished(requestId);
  }

  private markFinished(requestId: string): Promise<unknown> {
    const call = this.client
      .markFinished(create(MarkFinishedRequestSchema, { requestId }), { timeoutMs: this.timeoutMs })
      .catch(() => undefined)
      .finally(() => {
        if (this.finishing.get(requestId) === call) this.finishing.delete(requestId);
      });
    this.finishing.set(requestId, call);
    return call;
  }
}
