/**
 * The frontend's Prometheus metrics, `switchyard_frontend_*`, registered on the registry the
 * caller passes (one per frontend when several run in one process).
 */
import { Counter, Gauge, Histogram, type Registry } from "prom-client";
import type { GenerationObserver } from "./generation.ts";

export type Endpoint = "chat_completions" | "completions";

const LATENCY_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const DURATION_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export class FrontendMetrics {
  readonly requests: Counter<"model" | "endpoint" | "status">;
  readonly inflight: Gauge<"endpoint">;
  readonly timeToFirstToken: Histogram<"model">;
  readonly interTokenLatency: Histogram<"model">;
  readonly requestDuration: Histogram<"model" | "endpoint">;
  readonly inputTokens: Counter<"model">;
  readonly outputTokens: Counter<"model">;

  constructor(readonly registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: "switchyard_frontend_requests_total",
      help: "Requests answered, by model, endpoint and status (HTTP status; for a stream that failed after its 200, the error's; 499: the client left)",
      labelNames: ["model", "endpoint", "status"],
      registers,
    });
    this.inflight = new Gauge({
      name: "switchyard_frontend_inflight_requests",
      help: "Requests being served now (the model is not known before the body is parsed)",
      labelNames: ["endpoint"],
      registers,
    });
    this.timeToFirstToken = new Histogram({
      name: "switchyard_frontend_time_to_first_token_seconds",
      help: "From the request's arrival to its first generated token",
      labelNames: ["model"],
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.interTokenLatency = new Histogram({
      name: "switchyard_frontend_inter_token_latency_seconds",
      help: "Time between consecutive outputs of a request, per token",
      labelNames: ["model"],
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.requestDuration = new Histogram({
      name: "switchyard_frontend_request_duration_seconds",
      help: "From the request's arrival to its last byte",
      labelNames: ["model", "endpoint"],
      buckets: DURATION_BUCKETS_S,
      registers,
    });
    this.inputTokens = new Counter({
      name: "switchyard_frontend_input_tokens_total",
      help: "Prompt tokens of served requests",
      labelNames: ["model"],
      registers,
    });
    this.outputTokens = new Counter({
      name: "switchyard_frontend_output_tokens_total",
      help: "Generated tokens of served requests",
      labelNames: ["model"],
      registers,
    });
  }
}

/** TTFT and inter-token latency of one request, measured from its arrival at `startedAtMs`. */
export function requestObserver(metrics: FrontendMetrics, model: string, startedAtMs: number): GenerationObserver {
  const ttft = metrics.timeToFirstToken.labels(model);
  const itl = metrics.interTokenLatency.labels(model);
  // The request's first token (of any choice) is its TTFT; gaps are measured within a choice.
  let firstSeen = false;
  const lastMs: number[] = [];
  return {
    onTokens(count, nowMs, choiceIndex) {
      const last = lastMs[choiceIndex];
      if (!firstSeen) {
        firstSeen = true;
        ttft.observe((nowMs - startedAtMs) / 1000);
      } else if (last !== undefined) {
        // Several tokens in one worker message share the gap.
        itl.observe((nowMs - last) / 1000 / count);
      }
      lastMs[choiceIndex] = nowMs;
    },
  };
}
