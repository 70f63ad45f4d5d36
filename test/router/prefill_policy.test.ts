import { describe, expect, it } from "vitest";
import { decidePrefillPlace, type PrefillPolicyOptions } from "../../src/router/disagg/prefill_policy.ts";
import type { WorkerHandle } from "../../src/router/worker_handle.ts";

const prefillWorker = (inFlight: number) => ({ id: `p${inFlight}`, inFlight }) as unknown as WorkerHandle;
const always: PrefillPolicyOptions = { maxLocalPrefillLength: 0, maxPrefillQueueSize: 0 };

describe("conditional disaggregation", () => {
  it("prefills locally when there is no prefill worker", () => {
    expect(decidePrefillPlace({ uncachedTokens: 5000, maxTokens: 100, prefillWorkers: [] }, always)).toEqual({ where: "local", reason: "no_prefill_workers" });
  });

  it("sends every prompt to a prefill worker by default", () => {
    expect(decidePrefillPlace({ uncachedTokens: 1, maxTokens: 100, prefillWorkers: [prefillWorker(50)] }, always)).toEqual({ where: "remote" });
  });

  it("keeps a one-token request on the decode worker", () => {
    expect(decidePrefillPlace({ uncachedTokens: 5000, maxTokens: 1, prefillWorkers: [prefillWorker(0)] }, always)).toEqual({ where: "local", reason: "single_token" });
  });

  it("prefills short uncached parts locally, at the threshold remotely", () => {
    const options = { ...always, maxLocalPrefillLength: 256 };
    const workers = [prefillWorker(0)];
    expect(decidePrefillPlace({ uncachedTokens: 255, maxTokens: undefined, prefillWorkers: workers }, options)).toEqual({ where: "local", reason: "short_prompt" });
    expect(decidePrefillPlace({ uncachedTokens: 256, maxTokens: undefined, prefillWorkers: workers }, options)).toEqual({ where: "remote" });
  });

  it("prefills locally only when every prefill worker's queue is full", () => {
    const options = { ...always, maxPrefillQueueSize: 4 };
    expect(decidePrefillPlace({ uncachedTokens: 9000, maxTokens: 10, prefillWorkers: [prefillWorker(4), prefillWorker(3)] }, options)).toEqual({ where: "remote" });
    expect(decidePrefillPlace({ uncachedTokens: 9000, maxTokens: 10, prefillWorkers: [prefillWorker(4), prefillWorker(7)] }, options)).toEqual({
      where: "local",
      reason: "prefill_queue_full",
    });
  });
});
