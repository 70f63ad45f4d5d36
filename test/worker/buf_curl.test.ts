import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";

const root = join(import.meta.dirname, "..", "..");
const buf = join(root, "node_modules", ".bin", "buf");
const run = promisify(execFile);

async function bufCurl(protocol: "grpc" | "connect", url: string, data: object): Promise<unknown[]> {
  const { stdout } = await run(buf, ["curl", "--schema", join(root, "proto"), "--protocol", protocol, "--http2-prior-knowledge", "-d", JSON.stringify(data), url], { cwd: root });
  // buf curl prints each response message as a JSON document, one after another.
  return stdout
    .split(/\n(?=\{)/)
    .filter((s) => s.trim())
    .map((s) => JSON.parse(s));
}

describe("a worker called with buf curl", () => {
  let worker: RunningWorker;
  beforeAll(async () => {
    worker = await startWorker({
      engine: new MockerEngine({ speedupRatio: 0, maxModelLen: 4096 }),
      engineName: "mocker",
      model: "m",
      port: 0,
    });
  });
  afterAll(() => worker.close());

  for (const protocol of ["grpc", "connect"] as const) {
    it(`answers Health over ${protocol}`, async () => {
      const [health] = await bufCurl(protocol, `${worker.url}/switchyard.worker.v1.WorkerService/Health`, {});
      expect(health).toMatchObject({ status: "SERVING_STATUS_SERVING", message: "ok" });
    });

    it(`streams token ids from Generate over ${protocol}`, async () => {
      const messages = (await bufCurl(protocol, `${worker.url}/switchyard.worker.v1.WorkerService/Generate`, {
        requestId: `buf-${protocol}`,
        tokenIds: [101, 102, 103, 104, 105],
        sampling: { maxTokens: 6, seed: 7 },
      })) as { tokenIds?: number[]; finishReason?: string; usage?: { promptTokens: number; completionTokens: number } }[];
      const tokens = messages.flatMap((m) => m.tokenIds ?? []);
      expect(tokens).toHaveLength(6);
      const last = messages.at(-1)!;
      expect(last.finishReason).toBe("FINISH_REASON_LENGTH");
      expect(last.usage).toMatchObject({ promptTokens: 5, completionTokens: 6 });
    });
  }

  it("answers the standard grpc.health.v1 Check", async () => {
    const [status] = await bufCurl("grpc", `${worker.url}/grpc.health.v1.Health/Check`, {});
    expect(status).toEqual({ status: "SERVING" });
  });
});
