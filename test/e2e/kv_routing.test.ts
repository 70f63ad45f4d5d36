/**
 * KV-aware routing through the whole stack: a prompt seen before goes back to the worker that
 * cached it, which round-robin does not do for the same traffic.
 */
import { describe, expect, it } from "vitest";
import { serve } from "../../src/cli/serve.ts";

const MODEL = "switchyard-tiny-qwen3";

async function cachedTokens(url: string, prompt: string): Promise<number> {
  const res = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: MODEL, prompt, max_tokens: 2 }),
  });
  expect(res.status).toBe(200);
  const body = (await res.json()) as { usage: { prompt_tokens_details?: { cached_tokens?: number } } };
  return body.usage.prompt_tokens_details?.cached_tokens ?? 0;
}

async function indexedBlocks(url: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  return [...text.matchAll(/^switchyard_router_indexer_blocks\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
}

/** Four distinct long prompts, each sent twice, over three workers. */
async function secondPassHits(mode: string): Promise<number[]> {
  const server = await serve(["--port", "0", "--num-workers", "3", "--router-mode", mode, "--engine", "mocker", "--speedup-ratio", "0"]);
  try {
    const prompts = Array.from({ length: 4 }, (_, i) => `conversation ${i}: ` + `the switchyard sorts trains onto tracks ${i} `.repeat(30));
    for (const p of prompts) await cachedTokens(server.url, p);
    if (mode === "kv") {
      // KV events travel over the workers' KvEvents streams: wait until the router indexed them.
      // Each prompt is ~250 tokens: at least 12 full blocks of 16.
      await expect.poll(() => indexedBlocks(server.url), { timeout: 5000 }).toBeGreaterThanOrEqual(4 * 12);
    }
    const hits = [];
    for (const p of prompts) hits.push(await cachedTokens(server.url, p));
    return hits;
  } finally {
    await server.stop();
  }
}

describe("routing by KV overlap", () => {
  it("sends every repeated prompt to the worker that cached it", async () => {
    const hits = await secondPassHits("kv");
    for (const h of hits) expect(h).toBeGreaterThanOrEqual(200);
  });

  it("round-robin, for the same traffic, misses the cache on most repeats", async () => {
    const hits = await secondPassHits("round-robin");
    expect(hits.filter((h) => h > 0).length).toBeLessThan(2);
  });
});
