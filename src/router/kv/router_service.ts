/**
 * RouterService: the wire contract over a SharedRouter. Handlers validate, call the router and
 * map RouterError to Connect codes; the all_busy answer carries a retry-after header.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  FindBestWorkerResponseSchema,
  ListWorkersResponseSchema,
  MarkFinishedResponseSchema,
  RouterService,
} from "../../../gen/switchyard/router/v1/router_pb.ts";
import { RouterError } from "../router.ts";
import { KvSelector } from "./kv_selector.ts";
import type { SharedRouter } from "./shared_router.ts";

export function createRouterService(router: SharedRouter): ServiceImpl<typeof RouterService> {
  return {
    findBestWorker(request) {
      if (request.requestId === "") throw new ConnectError("request_id must be set", Code.InvalidArgument);
      if (request.tokenIds.length === 0) throw new ConnectError("token_ids must not be empty", Code.InvalidArgument);
      if (router.isRunning(request.requestId)) {
        throw new ConnectError(`request '${request.requestId}' is already running; mark it finished first`, Code.AlreadyExists);
      }
      try {
        const { worker, overlapBlocks, reason } = router.findBestWorker(request);
        return create(FindBestWorkerResponseSchema, {
          workerId: worker.id,
          workerUrl: worker.url,
          overlapBlocks: overlapBlocks ?? 0,
          reason,
          blockSize: worker.info.blockSize,
        });
      } catch (err) {
        throw routerErrorToConnect(err);
      }
    },

    markFinished(request) {
      return create(MarkFinishedResponseSchema, { found: router.markFinished(request.requestId) });
    },

    listWorkers() {
      const selector = router.selector instanceof KvSelector ? router.selector : undefined;
      return create(ListWorkersResponseSchema, {
        workers: router.liveWorkers().map((worker) => ({
          workerId: worker.id,
          workerUrl: worker.url,
          model: worker.info.model,
          cachedBlocks: selector?.indexer.blockCount(worker.id) ?? 0,
          activeRequests: selector?.active.activeRequests(worker.id) ?? 0,
          activeBlocks: selector?.active.activeBlocks(worker.id) ?? 0,
          kvSynced: selector?.indexer.isSynced(worker.id) ?? false,
        })),
      });
    },
  };
}

export function routerErrorToConnect(err: unknown): ConnectError {
  if (!(err instanceof RouterError)) return ConnectError.from(err, Code.Internal);
  switch (err.code) {
    case "all_busy": {
      const metadata = new Headers();
      if (err.retryAfterSeconds !== undefined) metadata.set("retry-after", String(err.retryAfterSeconds));
      return new ConnectError(err.message, Code.ResourceExhausted, metadata, undefined, err);
    }
    case "unknown_model":
      return new ConnectError(err.message, Code.NotFound, undefined, undefined, err);
    case "no_workers":
      return new ConnectError(err.message, Code.Unavailable, undefined, undefined, err);
  }
}
