import { describe, expect, it } from "vitest";
import type { Engine, EngineOutput, EngineRequest } from "../../src/engine/engine.ts";
import { MockerEngine } from "../../src/engine/mocker/mocker_engine.ts";
import { createLogger } from "../../src/runtime/logger.ts";
import { EngineMonitor } from "../../src/worker/engine_monitor.ts";

/** An engine whose step loop hangs: it accepts requests and never produces a token. */
function hungEngine(): Engine {
  const inner = new MockerEngine({ speedupRatio: 0 });
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === "generate") {
        return async function* (_request: EngineRequest, signal?: AbortSignal): AsyncGenerator<EngineOutput> {
          await new Promise<void>((resolve) => signal?.addEventListener("abort", () => resolve(), { once: true }));
        };
      }
      return Reflect.get(target, prop, receiver);
    },
  });
}

const payload = { token_ids: [1, 2, 3], max_tokens: 1 };
const log = createLogger("test", "error");

describe("engine monitor", () => {
  it("declares an engine that stops producing tokens dead after repeated failed canaries", async () => {
    const engine = hungEngine();
    const dead = new Promise<string>((resolve) => new EngineMonitor(engine, payload, resolve, log, { intervalMs: 10, canaryTimeoutMs: 50, failuresAllowed: 1 }).start());
    expect(await dead).toMatch(/did not finish within 50 ms/);
    await engine.close();
  });

  it("leaves a working engine alone", async () => {
    const engine = new MockerEngine({ speedupRatio: 0 });
    let declaredDead = false;
    const monitor = new EngineMonitor(engine, payload, () => (declaredDead = true), log, { intervalMs: 5, canaryTimeoutMs: 1000, failuresAllowed: 0 });
    monitor.start();
    // Enough canaries to have run several times.
    await expect.poll(() => engine.stats().prefixCacheQueries, { timeout: 2000 }).toBeGreaterThanOrEqual(15);
    monitor.stop();
    expect(declaredDead).toBe(false);
    await engine.close();
  });
});
