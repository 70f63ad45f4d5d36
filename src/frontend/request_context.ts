/** What an endpoint handler gets from the server for one request. */
import type { ServerResponse } from "node:http";
import type { Router } from "../router/router.ts";
import type { GenerationObserver } from "./generation.ts";
import type { ReasoningParserName } from "./reasoning.ts";
import type { ToolCallParserName } from "./tool_calls.ts";

export interface RequestContext {
  router: Router;
  res: ServerResponse;
  /** A fresh uuid; the worker's request_id and the base of the response id. */
  requestId: string;
  /** Aborted when the client goes away before its response is complete. */
  clientSignal: AbortSignal;
  /** Timing hooks for a model's metrics, from the request's arrival. */
  observe(model: string): GenerationObserver;
  /** How tool calls are read from chat output (--tool-call-parser); none: tool_choice auto is refused. */
  toolCallParser?: ToolCallParserName;
  /** Splits a thinking model's reasoning off its answer (--reasoning-parser). */
  reasoningParser?: ReasoningParserName;
  /** Set by the handler as soon as it knows the model, for the request's metric labels. */
  model?: string;
}
