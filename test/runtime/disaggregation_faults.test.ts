/**
 * Disaggregated serving as separate processes (frontend, prefill worker, decode worker, mocker
 * engines with KV blocks of realistic size), and what happens when the prefill worker dies in
 * the middle of handing its KV over: the decode worker computes the prompt itself and the
 * client gets its whole answer.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { streamCompletion } from "../helpers/openai_stream.ts";
import { startNatsServer, startSwitchyard, stop, type NatsServer, type Proc } from "../helpers/processes.ts";

const MODEL = "switchyard-tiny-qwen3";
// 256 KiB per block: a 3000-token prompt is 188 blocks, 47 MiB to move, longer than the time
// between the first token reaching the client and the decode worker's read.
const MOCKER = ["--engine", "mocker", "--num-gpu-blocks", "400", "--kv-bytes-per-block", String(256 << 10), "--speedup-ratio", "10"];

const prompt = (salt: number) => Array.from({ length: 3000 }, (_, i) => 100 + ((i * 7919 + salt * 104_729) % 30_000));

describe("disaggregated serving across processes", () => {
  let procs: Proc[] = [];
  let nats: NatsServer;
  beforeAll(async () => {
    nats = await startNatsServer();
  });
  afterAll(() => nats.stop());
  const spawn = async (args: string[]) => {
    const proc = await startSwitchyard(args);
    procs.push(proc);
    return proc;
  };
  afterEach(async () => {
    await Promise.all(procs.map((p) => stop(p, "SIGKILL")));
    procs = [];
  });

  it("finishes the request when the prefill worker is killed during the KV transfer", async () => {
    const [prefill, decode] = await Promise.all([
      spawn(["worker", "--port", "0", "--worker-id", "prefill-x", "--disaggregation-mode", "prefill", ...MOCKER]),
      spawn(["worker", "--port", "0", "--worker-id", "decode-x", "--disaggregation-mode", "decode", "--kv-transfer-timeout", "5", ...MOCKER]),
    ]);
    const frontend = await spawn(["frontend", "--port", "0", "--worker", prefill.url, "--worker", decode.url]);
    const body = { model: MODEL, max_tokens: 40, ignore_eos: true, seed: 5, temperature: 1 };

    // Undisturbed, the KV moves and nothing is recomputed.
    const calm = await streamCompletion(frontend.url, { ...body, prompt: prompt(1) });
    expect(calm.error).toBeUndefined();
    expect(calm.completionTokens).toBe(40);
    expect(decode.output()).not.toMatch(/computing the prompt here instead/);

    // Freeze the prefill worker as soon as its token reaches the client (the decode worker is
    // then reading its blocks), then kill it.
    const running = streamCompletion(frontend.url, { ...body, prompt: prompt(2) }, () => {
      prefill.child.kill("SIGSTOP");
      setTimeout(() => prefill.child.kill("SIGKILL"), 300);
    });
    const hit = await running;
    expect(hit.error).toBeUndefined();
    expect(hit.completionTokens).toBe(40);
    expect(hit.finishReason).toBe("length");
    expect(decode.output()).toMatch(/computing the prompt here instead/);

    // With the prefill worker gone the decode worker serves alone, and gives the same tokens:
    // the recomputed request lost nothing.
    const alone = await streamCompletion(frontend.url, { ...body, prompt: prompt(2) });
    expect(alone.error).toBeUndefined();
    expect(alone.text).toBe(hit.text);
  });

  it("finds prefill and decode workers through NATS and routes by KV on both pools", async () => {
    const worker = (id: string, mode: string) => spawn(["worker", "--port", "0", "--worker-id", id, "--disaggregation-mode", mode, "--nats", nats.url, ...MOCKER]);
    await Promise.all([worker("nats-prefill", "prefill"), worker("nats-decode", "decode")]);
    const frontend = await spawn(["frontend", "--port", "0", "--nats", nats.url, "--router-mode", "kv", "--max-local-prefill-length", "64"]);
    await expect
      .poll(async () => ((await (await fetch(`${frontend.url}/health`)).json()) as { instances: { mode: string }[] }).instances.map((i) => i.mode).sort(), { timeout: 15_000 })
      .toEqual(["decode", "prefill"]);
    const body = { model: MODEL, prompt: prompt(3).slice(0, 500), max_tokens: 8, ignore_eos: true };
    const first = await streamCompletion(frontend.url, body);
    expect(first.completionTokens).toBe(8);
    // The decode worker now caches the prompt it was handed (its KV events told the router), so
    // the same prompt again leaves fewer than 64 tokens to compute: prefilled locally.
    await expect
      .poll(async () => {
        const again = await streamCompletion(frontend.url, body);
        expect(again.text).toBe(first.text);
        return frontend.output();
      }, { timeout: 10_000 })
      .toMatch(/prefill on decode worker nats-decode \(short_prompt/);
    expect(frontend.output()).toMatch(/prefill on nats-prefill, decode on nats-decode \(500 uncached tokens\)/);
  });
});
