/**
 * grpc.health.v1.Health for any Connect server. Check answers for the server as a whole
 * (service ""); Watch sends the status on open and again whenever it changes.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ConnectRouter } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as Status,
} from "../../gen/grpc/health/v1/health_pb.ts";

const WATCH_POLL_MS = 1000;

export function grpcHealthService(router: ConnectRouter, servingStatus: () => Promise<Status>): void {
  router.service(Health, {
    async check(request) {
      if (request.service !== "") throw new ConnectError(`unknown service '${request.service}'`, Code.NotFound);
      return create(HealthCheckResponseSchema, { status: await servingStatus() });
    },
    async *watch(request, context) {
      if (request.service !== "") {
        yield create(HealthCheckResponseSchema, { status: Status.SERVICE_UNKNOWN });
        return;
      }
      let last: Status | undefined;
      while (!context.signal.aborted) {
        const status = await servingStatus();
        if (status !== last) {
          last = status;
          yield create(HealthCheckResponseSchema, { status });
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, WATCH_POLL_MS);
          context.signal.addEventListener("abort", () => {
            clearTimeout(timer);
            resolve();
          }, { once: true });
        });
      }
    },
  });
}
