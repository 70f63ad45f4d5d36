/**
 * The OpenAI-compatible HTTP frontend on node:http: routes, request bodies (JSON, capped), the
 * per-request AbortSignal tied to the client's connection, metrics, and shutdown. Endpoint
 * logic lives in chat_completions.ts and completions.ts.
 */
import { randomUUID } from "node:crypto";
import http, { type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Registry } from "prom-client";
import type { Router } from "../router/router.ts";
import { createLogger, type Logger } from "../runtime/logger.ts";
import { handleChatCompletions } from "./chat_completions.ts";
import { handleCompletions } from "./completions.ts";
import { ApiError, sendError, toApiError } from "./errors.ts";
import { CLIENT_CLOSED_STATUS, type Outcome } from "./generation_response.ts";
import { FrontendMetrics, requestObserver, type Endpoint } from "./metrics.ts";
import { modelJson, modelListJson } from "./models.ts";
import type { RequestContext } from "./request_context.ts";
import { detokenizeJson, tokenizeJson } from "./tokenize.ts";
import { tokenizerFor } from "./tokenizer.ts";
import type { ReasoningParserName } from "./reasoning.ts";
import type { ToolCallParserName } from "./tool_calls.ts";

export const DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface FrontendOptions {
  /** Address to listen on (default 127.0.0.1). */
  host?: string;
  /** Port; 0 picks a free one. */
  port: number;
  router: Router;
  logger?: Logger;
  /** Where the frontend registers its metrics (default: a registry of its own). */
  metricsRegistry?: Registry;
  /** Larger request bodies are refused with 413 (default 4 MiB). */
  maxBodyBytes?: number;
  /** Reads tool calls out of chat output, which tool_choice "auto" needs (default: none). */
  toolCallParser?: ToolCallParserName;
  /** Splits a thinking model's reasoning into `reasoning_content` (default: left in the content). */
  reasoningParser?: ReasoningParserName;
}

export interface RunningFrontend {
  /** e.g. http://127.0.0.1:8000 (the OpenAI base URL is this plus /v1). */
  url: string;
  port: number;
  metrics: FrontendMetrics;
  /** Stops accepting requests, lets running ones finish for up to gracePeriodMs, then cuts them. */
  close(gracePeriodMs?: number): Promise<void>;
}

type EndpointHandler = (ctx: RequestContext, body: unknown) => Promise<Outcome>;

export async function startFrontend(options: FrontendOptions): Promise<RunningFrontend> {
  const { router } = options;
  const log = options.logger ?? createLogger("frontend");
  const registry = options.metricsRegistry ?? new Registry();
  const metrics = new FrontendMetrics(registry);
  const maxBodyBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const startedS = Math.floor(Date.now() / 1000);
  let closing = false;

  // Tokenizers take a second to build; do it now for the models already known rather than on
  // the first request. A model whose files are bad fails its requests, not the frontend.
  const warmTokenizer = (card: { name: string; path: string }) => {
    try {
      tokenizerFor(card.path);
    } catch (err) {
      log.warn(`cannot load the tokenizer of model '${card.name}'`, err);
    }
  };
  for (const card of router.models()) warmTokenizer(card);
  // Models found later by discovery: load their tokenizer before the first request needs it.
  router.onModelCard?.((card) => setImmediate(() => warmTokenizer(card)));

  async function serveGeneration(req: IncomingMessage, res: ServerResponse, endpoint: Endpoint, handler: EndpointHandler): Promise<void> {
    requireMethod(req, "POST");
    const startedAtMs = performance.now();
    const abort = new AbortController();
    res.on("close", () => {
      if (!res.writableFinished) abort.abort();
    });
    const ctx: RequestContext = {
      router,
      res,
      requestId: randomUUID(),
      clientSignal: abort.signal,
      observe: (model) => requestObserver(metrics, model, startedAtMs),
      toolCallParser: options.toolCallParser,
      reasoningParser: options.reasoningParser,
    };
    const inflight = metrics.inflight.labels(endpoint);
    inflight.inc();
    let outcome: Outcome | undefined;
    let status: number;
    try {
      outcome = await handler(ctx, await readJsonBody(req, maxBodyBytes));
      status = outcome.status;
    } catch (err) {
      const apiError = toApiError(err);
      status = res.destroyed ? CLIENT_CLOSED_STATUS : apiError.status;
      if (status !== CLIENT_CLOSED_STATUS && apiError.status >= 500) {
        // 503s (no worker, all busy) are load, not faults; under load they would flood the log.
        if (apiError.status === 503) log.debug(`${endpoint} request ${ctx.requestId} refused: ${apiError.message}`);
        else log.warn(`${endpoint} request ${ctx.requestId} failed (${apiError.status})`, err);
      }
      if (!res.headersSent && !res.destroyed) {
        // A body we stopped reading leaves the connection unusable.
        sendError(res, apiError, apiError.status === 413 ? { connection: "close" } : {});
      }
    } finally {
      inflight.dec();
    }
    const model = ctx.model ?? "";
    metrics.requests.labels(model, endpoint, String(status)).inc();
    metrics.requestDuration.labels(model, endpoint).observe((performance.now() - startedAtMs) / 1000);
    if (outcome !== undefined) {
      metrics.inputTokens.labels(model).inc(outcome.usage.promptTokens);
      metrics.outputTokens.labels(model).inc(outcome.usage.completionTokens);
    }
  }

  async function dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = req.url ?? "/";
    const query = url.indexOf("?");
    const path = query < 0 ? url : url.slice(0, query);
    switch (path) {
      case "/v1/chat/completions":
        return serveGeneration(req, res, "chat_completions", handleChatCompletions);
      case "/v1/completions":
        return serveGeneration(req, res, "completions", handleCompletions);
      case "/v1/models":
        requireMethod(req, "GET");
        return sendJson(res, 200, modelListJson(router, startedS));
      case "/health": {
        requireMethod(req, "GET");
        const models = router.models().map((m) => ({ name: m.name, max_model_len: m.maxModelLen, block_size: m.blockSize }));
        const instances = router.instances().map((i) => ({ id: i.id, url: i.url, model: i.model, mode: i.mode, in_flight: i.inFlight }));
        const healthy = models.length > 0;
        const status = healthy ? { status: "healthy" } : { status: "unhealthy", message: "no worker is serving any model" };
        return sendJson(res, healthy ? 200 : 503, JSON.stringify({ ...status, models, instances }));
      }
      case "/tokenize":
        requireMethod(req, "POST");
        return sendJson(res, 200, tokenizeJson(router, await readJsonBody(req, maxBodyBytes)));
      case "/detokenize":
        requireMethod(req, "POST");
        return sendJson(res, 200, detokenizeJson(router, await readJsonBody(req, maxBodyBytes)));
      case "/live":
        requireMethod(req, "GET");
        return sendJson(res, 200, '{"status":"live"}');
      case "/metrics": {
        requireMethod(req, "GET");
        const text = await registry.metrics();
        res.writeHead(200, { "content-type": registry.contentType, "content-length": Buffer.byteLength(text) });
        res.end(text);
        return;
      }
    }
    if (path.startsWith("/v1/models/")) {
      requireMethod(req, "GET");
      const name = decodeURIComponent(path.slice("/v1/models/".length));
      const card = router.models().find((m) => m.name === name);
      if (card === undefined) throw ApiError.modelNotFound(name);
      return sendJson(res, 200, JSON.stringify(modelJson(card, startedS)));
    }
    throw new ApiError(404, `no route for ${req.method} ${path}`, "not_found_error", "unknown_route");
  }

  const server = http.createServer((req, res) => {
    if (closing) res.on("finish", () => setImmediate(() => server.closeIdleConnections()));
    dispatch(req, res).catch((err) => {
      const apiError = toApiError(err);
      if (apiError.status >= 500) log.error(`${req.method} ${req.url} failed`, err);
      if (!res.headersSent && !res.destroyed) sendError(res, apiError, apiError.status === 405 ? { allow: (apiError as MethodNotAllowed).allow } : {});
      else res.destroy();
    });
  });
  server.on("clientError", (err, socket) => {
    if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
    else socket.destroy(err);
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(options.port, options.host ?? "127.0.0.1", () => {
      server.off("error", reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === "IPv6" ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    port: address.port,
    metrics,
    async close(gracePeriodMs = 0) {
      closing = true;
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const cut = setTimeout(() => server.closeAllConnections(), gracePeriodMs);
      await closed;
      clearTimeout(cut);
    },
  };
}

class MethodNotAllowed extends ApiError {
  constructor(
    method: string | undefined,
    path: string | undefined,
    readonly allow: string,
  ) {
    super(405, `${method} is not allowed on ${path}; use ${allow}`, "invalid_request_error", "method_not_allowed");
  }
}

function requireMethod(req: IncomingMessage, method: "GET" | "POST"): void {
  if (req.method !== method && !(method === "GET" && req.method === "HEAD")) throw new MethodNotAllowed(req.method, req.url, method);
}

function sendJson(res: ServerResponse, status: number, body: string): void {
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
  res.end(body);
}

function bodyTooLarge(maxBytes: number): ApiError {
  return new ApiError(413, `the request body is larger than ${maxBytes} bytes`, "invalid_request_error", "request_too_large");
}

/** Reads and parses the JSON body, refusing (and no longer reading) one over maxBytes. */
async function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  const declared = Number(req.headers["content-length"]);
  if (declared > maxBytes) throw bodyTooLarge(maxBytes);
  const raw = await new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const cleanup = () => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("error", onError);
      req.off("close", onClose);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        cleanup();
        req.pause();
        reject(bodyTooLarge(maxBytes));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      resolve(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    };
    // The client is gone either way; a 400 keeps its mistake out of the server-error log.
    const onError = (err: Error) => {
      cleanup();
      reject(new ApiError(400, `reading the request body failed: ${err.message}`, "invalid_request_error", "incomplete_body", null, { cause: err }));
    };
    const onClose = () => {
      cleanup();
      reject(new ApiError(400, "the client closed the connection before sending the whole body", "invalid_request_error", "incomplete_body"));
    };
    req.on("data", onData);
    req.on("end", onEnd);
    req.on("error", onError);
    req.on("close", onClose);
  });
  let body: unknown;
  try {
    body = JSON.parse(raw.toString("utf8"));
  } catch (err) {
    throw ApiError.badRequest(`the request body is not valid JSON: ${(err as Error).message}`, null, "invalid_json");
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw ApiError.badRequest("the request body must be a JSON object", null, "invalid_json");
  return body;
}
