/**
 * Starts an HTTP/2 server that answers the Connect, gRPC and gRPC-web protocols on one port
 * (plaintext h2c by default, TLS when a certificate is given), with the standard
 * grpc.health.v1.Health service mounted beside the caller's services.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { HealthCheckResponse_ServingStatus as GrpcServingStatus } from "../../gen/grpc/health/v1/health_pb.ts";
import { grpcHealthService } from "./grpc_health.ts";

export interface TlsFiles {
  certFile: string;
  keyFile: string;
}

export interface ConnectServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  tls?: TlsFiles;
  routes: (router: ConnectRouter) => void;
  /** Answers grpc.health.v1.Health/Check for the whole server (service ""). */
  servingStatus: () => Promise<GrpcServingStatus>;
}

export interface RunningServer {
  readonly url: string;
  readonly port: number;
  /** Stops accepting connections and closes open ones once their streams end. */
  close(): Promise<void>;
  /** Closes every open session at once. */
  destroy(): void;
}

export async function startConnectServer(options: ConnectServerOptions): Promise<RunningServer> {
  const handler = connectNodeAdapter({
    routes: (router) => {
      options.routes(router);
      grpcHealthService(router, options.servingStatus);
    },
  });
  const sessions = new Set<http2.Http2Session>();
  const server = options.tls
    ? http2.createSecureServer(
        { cert: readFileSync(options.tls.certFile), key: readFileSync(options.tls.keyFile), allowHTTP1: true },
        handler,
      )
    : http2.createServer({}, handler);
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = options.host.includes(":") ? `[${options.host}]` : options.host;
  const shownHost = host === "0.0.0.0" || host === "[::]" ? "127.0.0.1" : host;
  return {
    url: `${options.tls ? "https" : "http"}://${shownHost}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const session of sessions) session.close();
      }),
    destroy: () => {
      for (const session of sessions) session.destroy();
      server.close();
    },
  };
}
