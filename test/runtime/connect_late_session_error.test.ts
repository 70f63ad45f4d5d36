/**
 * connect-node raises the error of a connection it destroyed on GOAWAY late, on the session,
 * and can have stopped listening by then (connectrpc/connect-es#1768): an uncaught exception
 * that would take a whole frontend down because a worker drained. The window is a socket's
 * close on loopback, too short to hit on purpose, so this checks the guard itself: every
 * session a worker client opens a stream on carries a listener that takes such late errors,
 * and an error emitted on it after the manager let go of the session is not uncaught.
 *
 * connect-node also waits for ever on a stream that closes with no error code before any
 * response (it maps NO_ERROR to no error). The guard fails such a call as `unavailable`, which
 * the router retries on another worker: checked against a server that does exactly that.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { GetInfoRequestSchema } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { GuardedHttp2SessionManager, ignoreLateSessionError } from "../../src/runtime/guarded_session_manager.ts";
import { createWorkerClient } from "../../src/router/worker_handle.ts";
import { startWorker, type RunningWorker } from "../../src/worker/worker_server.ts";

describe("Connect client sessions and late connection errors", () => {
  let worker: RunningWorker | undefined;
  afterEach(async () => {
    await worker?.close();
  });

  it("guards every session a stream was opened on", async () => {
    worker = await startWorker({ engine: new MockerEngine(), engineName: "mocker", model: "m" });
    const manager = new GuardedHttp2SessionManager(worker.url);
    const stream = await manager.request("POST", "/switchyard.worker.v1.WorkerService/GetInfo", { "content-type": "application/grpc" }, {});
    const session = stream.session as http2.ClientHttp2Session;
    expect(session.listeners("error")).toContain(ignoreLateSessionError);
    // What the manager does when it leaves the connection behind: it drops its own listeners.
    for (const listener of session.listeners("error")) if (listener !== ignoreLateSessionError) session.off("error", listener as () => void);
    // An error the session raises now lands on the guard instead of becoming uncaught.
    expect(() => session.emit("error", new Error("late error of a destroyed connection"))).not.toThrow();
    stream.on("error", () => {});
    stream.close();
    manager.abort();
  });

  it("fails a call whose stream the server closes with no error before answering, at once", async () => {
    // RST_STREAM(NO_ERROR) on every stream, no response: what a server going away can send.
    const server = http2.createServer();
    server.on("stream", (stream) => stream.close(http2.constants.NGHTTP2_NO_ERROR));
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const client = createWorkerClient(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
      const started = performance.now();
      const err = await client.getInfo(create(GetInfoRequestSchema, {}), { timeoutMs: 10_000 }).then(
        () => undefined,
        (e: unknown) => ConnectError.from(e),
      );
      expect(err?.code).toBe(Code.Unavailable);
      expect(err?.message).toMatch(/closed before a response/);
      expect(performance.now() - started).toBeLessThan(2000);
    } finally {
      server.close();
    }
  });

  it("is what worker clients use, and they still work", async () => {
    worker = await startWorker({ engine: new MockerEngine(), engineName: "mocker", model: "m" });
    const client = createWorkerClient(worker.url);
    expect((await client.getInfo(create(GetInfoRequestSchema, {}))).model).toBe("m");
  });
});
