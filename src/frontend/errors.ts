/**
 * OpenAI-shaped errors: `{"error":{"message","type","param","code"}}` with the HTTP status a
 * client's SDK expects. Everything that goes wrong in a request ends up as an ApiError, either
 * thrown as one at the boundary or mapped here from the router's and the worker's errors.
 */
import type { ServerResponse } from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import { RouterError } from "../router/router.ts";

export type ApiErrorType = "invalid_request_error" | "not_found_error" | "server_error" | "service_unavailable_error";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ApiErrorType,
    readonly code: string | null = null,
    readonly param: string | null = null,
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(message, options);
    this.name = "ApiError";
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  readonly retryAfterSeconds: number | undefined;

  static badRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
    return new ApiError(400, message, "invalid_request_error", code, param);
  }

  static modelNotFound(model: string): ApiError {
    return new ApiError(404, `The model '${model}' does not exist.`, "not_found_error", "model_not_found", "model");
  }

  static noWorkers(message = "no worker is serving any model right now"): ApiError {
    return new ApiError(503, message, "service_unavailable_error", "no_workers");
  }

  /** The JSON body, `{"error":{...}}`. */
  toJson(): string {
    return JSON.stringify({ error: { message: this.message, type: this.type, param: this.param, code: this.code } });
  }
}

/** Maps any error thrown while serving a request to the ApiError the client sees. */
export function toApiError(err: unknown): ApiError {
  if (err instanceof ApiError) return err;
  if (err instanceof RouterError) {
    switch (err.code) {
      case "unknown_model":
        return new ApiError(404, err.message, "not_found_error", "model_not_found", "model", { cause: err });
      case "no_workers":
        return new ApiError(503, err.message, "service_unavailable_error", "no_workers", null, { cause: err });
      case "all_busy":
        return new ApiError(503, err.message, "service_unavailable_error", "all_busy", null, { cause: err, retryAfterSeconds: err.retryAfterSeconds });
    }
  }
  if (err instanceof ConnectError) return fromConnectError(err);
  return new ApiError(500, `internal error: ${err instanceof Error ? err.message : String(err)}`, "server_error", "internal_error", null, { cause: err });
}

function fromConnectError(err: ConnectError): ApiError {
  // rawMessage drops the "[code]" prefix Connect puts in front of the worker's message.
  const message = err.rawMessage;
  switch (err.code) {
    case Code.InvalidArgument:
    case Code.OutOfRange:
    case Code.FailedPrecondition:
      return new ApiError(400, message, "invalid_request_error", "invalid_argument", null, { cause: err });
    case Code.NotFound:
      return new ApiError(404, message, "not_found_error", "not_found", null, { cause: err });
    case Code.ResourceExhausted:
      return new ApiError(503, message, "service_unavailable_error", "resource_exhausted", null, { cause: err, retryAfterSeconds: 1 });
    case Code.Unavailable:
      return new ApiError(503, message, "service_unavailable_error", "unavailable", null, { cause: err, retryAfterSeconds: 1 });
    case Code.DeadlineExceeded:
      return new ApiError(504, message, "server_error", "deadline_exceeded", null, { cause: err });
    default:
      return new ApiError(500, `worker error: ${message}`, "server_error", Code[err.code]?.toLowerCase() ?? "internal_error", null, { cause: err });
  }
}

/** Sends an error as a whole JSON response; only valid before any header went out. */
export function sendError(res: ServerResponse, err: ApiError, extraHeaders: Record<string, string> = {}): void {
  const body = err.toJson();
  const headers: Record<string, string | number> = {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    ...extraHeaders,
  };
  if (err.retryAfterSeconds !== undefined) headers["retry-after"] = String(Math.max(1, Math.ceil(err.retryAfterSeconds)));
  res.writeHead(err.status, headers);
  res.end(body);
}
