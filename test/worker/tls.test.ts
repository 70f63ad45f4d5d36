import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, describe, expect, it } from "vitest";
import { GetInfoRequestSchema, WorkerService } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { startWorker } from "../../src/worker/worker_server.ts";

describe("a worker with TLS", () => {
  const dir = mkdtempSync(join(tmpdir(), "switchyard-tls-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("serves gRPC over TLS to a client that trusts its certificate, and refuses plaintext", async () => {
    const certFile = join(dir, "tls.crt");
    const keyFile = join(dir, "tls.key");
    execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", keyFile, "-out", certFile, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
    const worker = await startWorker({ engine: new MockerEngine({ speedupRatio: 0 }), engineName: "mocker", model: "m", port: 0, tls: { certFile, keyFile } });
    try {
      expect(worker.url.startsWith("https://")).toBe(true);
      const client = createClient(WorkerService, createGrpcTransport({ baseUrl: worker.url, nodeOptions: { ca: readFileSync(certFile) } }));
      const info = await client.getInfo(create(GetInfoRequestSchema, {}));
      expect(info.model).toBe("m");
      const plain = createClient(WorkerService, createGrpcTransport({ baseUrl: worker.url.replace("https://", "http://") }));
      await expect(plain.getInfo(create(GetInfoRequestSchema, {}), { timeoutMs: 2000 })).rejects.toThrow();
    } finally {
      await worker.close();
    }
  });
});
