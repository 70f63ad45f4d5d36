/**
 * A worker that gives a request up unasked (its engine closed under it, as when a shutdown runs
 * past its grace period) answers it as cancelled. The router does not hand that to the caller as
 * the request's end: the request goes to another worker, as a migration once tokens have
 * arrived, and the caller gets the whole answer. Two mocker workers over HTTP/2.
 */
import { create } from "@bufbuild/protobuf";
import { afterEach, describe, expect, it } from "vitest";
import { FinishReason, GenerateRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { connectWorker } from "../../src/router/worker_handle.ts";
import { WorkerRouter } from "../../src/router/worker_router.ts";
import { RoundRobinSelector } from "../../src/router/worker_selector.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";

const MODEL = "tiny";
const MAX_TOKENS = 64;

describe("a worker that cancels a request it was not asked to cancel", () => {
  let workers: RunningWorker[] = [];
  let router: WorkerRouter | undefined;
  afterEach(async () => {
    await router?.close();
    await Promise.all(workers.map((w) => w.close()));
    workers = [];
  });

  async function setUp(migrationLimit: number): Promise<[RunningWorker, RunningWorker, WorkerRouter]> {
    workers = await Promise.all(
      ["gives-up", "takes-over"].map((workerId) =>
        // Real time (speedup 1), so the request is still running when its engine closes.
        startWorker({ engine: new MockerEngine({ speedupRatio: 1 }), engineName: "mocker", model: MODEL, workerId }),
      ),
    );
    router = new WorkerRouter([{ name: MODEL, path: "", maxModelLen: 4096, blockSize: 16 }], new RoundRobinSelector(), { migrationLimit });
    router.addWorker(await connectWorker(workers[0].url));
    return [workers[0], workers[1], router];
  }

  /** Runs a request on the first worker and closes that worker's engine once 8 tokens are in. */
  async function runAndGiveUp(first: RunningWorker, second: RunningWorker, r: WorkerRouter) {
    const request = create(GenerateRequestSchema, {
      requestId: "given-up",
      model: MODEL,
      tokenIds: Array.from({ length: 40 }, (_, i) => 100 + i),
      sampling: { maxTokens: MAX_TOKENS, ignoreEos: true },
    });
    const tokens: number[] = [];
    let finish: FinishReason | undefined;
    let gaveUpAfter: number | undefined;
    try {
      for await (const response of r.generate(request, new AbortController().signal)) {
        tokens.push(...response.tokenIds);
        if (response.finishReason !== FinishReason.UNSPECIFIED) finish = response.finishReason;
        if (gaveUpAfter === undefined && tokens.length >= 8 && finish === undefined) {
          gaveUpAfter = tokens.length;
          r.addWorker(await connectWorker(second.url));
          await first.engine.close();
        }
      }
      return { tokens, finish, gaveUpAfter, error: undefined };
    } catch (err) {
      return { tokens, finish, gaveUpAfter, error: err as Error };
    }
  }

  it("moves the request to another worker, which finishes it", async () => {
    const [first, second, r] = await setUp(1);
    const { tokens, finish, gaveUpAfter, error } = await runAndGiveUp(first, second, r);
    expect(error).toBeUndefined();
    expect(gaveUpAfter).toBeGreaterThanOrEqual(8);
    expect(gaveUpAfter).toBeLessThan(MAX_TOKENS);
    expect(finish).toBe(FinishReason.LENGTH);
    expect(tokens).toHaveLength(MAX_TOKENS);
    // The second worker ran the continuation: the prompt and the tokens so far.
    expect(second.engine.stats().prefixCacheQueries).toBeGreaterThanOrEqual(40 + (gaveUpAfter ?? 0));
  });

  it("ends the request with an error, not a cancelled finish, when migration is off", async () => {
    const [first, second, r] = await setUp(0);
    const { finish, gaveUpAfter, error } = await runAndGiveUp(first, second, r);
    expect(gaveUpAfter).toBeGreaterThanOrEqual(8);
    expect(finish).toBeUndefined();
    expect(error?.message).toMatch(/worker gives-up cancelled the request before the request finished/);
  });
});
