/**
 * The canary: a one-token generation through the engine, proving the step loop is alive.
 * SWITCHYARD_HEALTH_CHECK_PAYLOAD overrides the prompt, as JSON
 * `{"token_ids": [..], "max_tokens": n}`.
 */
import { randomUUID } from "node:crypto";
import { z } from "zod";
import type { Engine } from "../engine/engine.ts";

const PayloadSchema = z.object({
  token_ids: z.array(z.number().int().nonnegative()).min(1),
  max_tokens: z.number().int().positive().default(1),
});

export type HealthCheckPayload = z.infer<typeof PayloadSchema>;

export function healthCheckPayload(env: NodeJS.ProcessEnv = process.env): HealthCheckPayload {
  const raw = env.SWITCHYARD_HEALTH_CHECK_PAYLOAD;
  if (!raw) return { token_ids: [1, 2, 3, 4], max_tokens: 1 };
  try {
    return PayloadSchema.parse(JSON.parse(raw));
  } catch (err) {
    throw new Error(`SWITCHYARD_HEALTH_CHECK_PAYLOAD must be JSON {"token_ids":[...],"max_tokens":n}: ${raw}`, { cause: err });
  }
}

export interface CanaryResult {
  healthy: boolean;
  latencyMs: number;
  message: string;
}

export async function runCanary(engine: Engine, payload: HealthCheckPayload, timeoutMs: number): Promise<CanaryResult> {
  const started = performance.now();
  const signal = AbortSignal.timeout(timeoutMs);
  try {
    let tokens = 0;
    for await (const output of engine.generate(
      {
        requestId: `health-${randomUUID()}`,
        promptTokenIds: payload.token_ids,
        sampling: {
          temperature: 0, topP: 1, topK: 0, minP: 0, maxTokens: payload.max_tokens, minTokens: 0,
          stopTokenIds: [], ignoreEos: true, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
        },
      },
      signal,
    )) {
      tokens += output.tokenIds.length;
      if (output.finishReason === "error") throw new Error(output.errorMessage ?? "engine error");
      if (output.finishReason === "cancelled") throw new Error(`canary did not finish within ${timeoutMs} ms`);
    }
    const latencyMs = performance.now() - started;
    if (tokens > 0) return { healthy: true, latencyMs, message: "ok" };
    return { healthy: false, latencyMs, message: signal.aborted ? `canary did not finish within ${timeoutMs} ms` : "canary produced no token" };
  } catch (err) {
    return { healthy: false, latencyMs: performance.now() - started, message: `canary failed: ${(err as Error).message}` };
  }
}
