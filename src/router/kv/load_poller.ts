/**
 * Polls one worker's GetInfo for its LoadMetrics until aborted, so the busy check sees the
 * engine's own queue and KV usage (which include requests other routers sent). A failed poll
 * keeps the last figures; the worker's liveness is discovery's business, not this loop's.
 */
import { create } from "@bufbuild/protobuf";
import { GetInfoRequestSchema, type LoadMetrics } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { WorkerClient } from "../worker_handle.ts";
import { sleep } from "../../util/sleep.ts";

export async function pollLoad(
  client: Pick<WorkerClient, "getInfo">,
  intervalMs: number,
  signal: AbortSignal,
  onLoad: (load: LoadMetrics) => void,
): Promise<void> {
  while (!signal.aborted) {
    try {
      const info = await client.getInfo(create(GetInfoRequestSchema, {}), { signal, timeoutMs: Math.max(intervalMs, 1000) });
      if (info.load) onLoad(info.load);
    } catch {
      // Keep the last known load; discovery takes a dead worker out.
    }
    await sleep(intervalMs, signal);
  }
}
