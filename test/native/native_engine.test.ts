/** NativeEngine through the Engine interface: generation, finishing, aborting, bad input. */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { EngineError } from "../../src/engine/engine.ts";
import { NativeEngine } from "../../src/engine/native/native_engine.ts";
import { collect, sampling } from "./helpers.ts";
import { promptTokens, testLlamaDir } from "./models.ts";

const tmp = mkdtempSync(join(tmpdir(), "sy-native-"));
let engine: NativeEngine;

beforeAll(async () => {
  engine = await NativeEngine.load({ model: testLlamaDir(), device: "cpu", kvCacheMemoryBytes: 4 << 20, maxModelLen: 256 });
});
afterAll(async () => {
  await engine.close();
  rmSync(tmp, { recursive: true, force: true });
});

/** A copy of the Llama test model with config.json edited (weights copied as they are). */
function modelVariant(name: string, edit: (config: Record<string, unknown>) => void, files?: Record<string, Buffer | string>): string {
  const dir = join(tmp, name);
  cpSync(testLlamaDir(), dir, { recursive: true });
  const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  edit(config);
  writeFileSync(join(dir, "config.json"), JSON.stringify(config));
  for (const [file, data] of Object.entries(files ?? {})) writeFileSync(join(dir, file), data);
  return dir;
}

describe("NativeEngine generation", () => {
  it("generates max_tokens greedy tokens and finishes with length and usage", async () => {
    const prompt = promptTokens(21, 1);
    const out = await collect(engine, "len", prompt, sampling({ maxTokens: 7 }));
    expect(out.tokenIds).toHaveLength(7);
    expect(out.finishReason).toBe("length");
    expect(out.usage).toEqual({ promptTokens: 21, completionTokens: 7, cachedTokens: 0 });
    // One output per step, each with one token.
    expect(out.outputs.every((o) => o.tokenIds.length === 1)).toBe(true);
    const again = await collect(engine, "len2", prompt, sampling({ maxTokens: 7 }));
    expect(again.tokenIds).toEqual(out.tokenIds);
  });

  it("stops at a stop token id, but not before min_tokens", async () => {
    const prompt = promptTokens(10, 2);
    const free = await collect(engine, "free", prompt, sampling({ maxTokens: 6 }));
    const stop = free.tokenIds[2];
    const stopped = await collect(engine, "stop", prompt, sampling({ maxTokens: 6, stopTokenIds: [stop] }));
    const first = free.tokenIds.indexOf(stop);
    expect(stopped.finishReason).toBe("stop");
    expect(stopped.tokenIds).toEqual(free.tokenIds.slice(0, first + 1));
    const held = await collect(engine, "held", prompt, sampling({ maxTokens: 6, stopTokenIds: [stop], minTokens: 6 }));
    expect(held.finishReason).toBe("length");
    expect(held.tokenIds).toHaveLength(6);
  });

  it("stops at EOS from generation_config.json unless ignore_eos", async () => {
    const prompt = promptTokens(12, 3);
    const free = await collect(engine, "eos-free", prompt, sampling({ maxTokens: 4 }));
    const dir = modelVariant("eos", () => {}, {
      "generation_config.json": JSON.stringify({ eos_token_id: [free.tokenIds[1]] }),
    });
    const e = await NativeEngine.load({ model: dir, device: "cpu", kvCacheMemoryBytes: 1 << 20 });
    try {
      expect(e.info.eosTokenIds).toContain(free.tokenIds[1]);
      const stopped = await collect(e, "eos", prompt, sampling({ maxTokens: 4, ignoreEos: false }));
      expect(stopped.finishReason).toBe("stop");
      expect(stopped.tokenIds).toEqual(free.tokenIds.slice(0, free.tokenIds.indexOf(free.tokenIds[1]) + 1));
      const ignored = await collect(e, "eos-ignored", prompt, sampling({ maxTokens: 4, ignoreEos: true }));
      expect(ignored.tokenIds).toEqual(free.tokenIds);
    } finally {
      await e.close();
    }
  });

  it("stops at max model length", async () => {
    const out = await collect(engine, "ctx", promptTokens(250, 4), sampling({ maxTokens: 100 }));
    expect(out.finishReason).toBe("length");
    expect(out.tokenIds).toHaveLength(6);
  });

  it("rejects a prompt that leaves no room to generate with invalid_argument", async () => {
    const gen = engine.generate({ requestId: "long", promptTokenIds: promptTokens(256, 5), sampling: sampling() });
    await expect(gen[Symbol.asyncIterator]().next()).rejects.toMatchObject({ name: "EngineError", code: "invalid_argument" });
  });

  it("rejects token ids outside the vocabulary with invalid_argument", async () => {
    const gen = engine.generate({ requestId: "vocab", promptTokenIds: [1, 2, 999999], sampling: sampling() });
    const err = await gen[Symbol.asyncIterator]().next().catch((e) => e);
    expect(err).toBeInstanceOf(EngineError);
    expect(err.code).toBe("invalid_argument");
    expect(err.message).toMatch(/999999/);
  });

  it("cancels on the abort signal and frees the request's blocks", async () => {
    const controller = new AbortController();
    const outputs = [];
    for await (const out of engine.generate(
      { requestId: "sig", promptTokenIds: promptTokens(40, 6), sampling: sampling({ maxTokens: 200 }) },
      controller.signal,
    )) {
      outputs.push(out);
      if (outputs.length === 2) controller.abort();
    }
    expect(outputs.at(-1)!.finishReason).toBe("cancelled");
    // How many steps run before the abort lands depends on the machine's load (a step of this
    // tiny model takes about a millisecond); "cancelled" says it landed before the request ended.
    expect(outputs.flatMap((o) => o.tokenIds).length).toBeLessThan(200);
    await vi.waitFor(() => expect(engine.stats()).toMatchObject({ runningRequests: 0, waitingRequests: 0, kvBlocksUsed: 0 }));
  });

  it("cancels by abort(requestId), and abort of an unknown id is false", async () => {
    const it = engine.generate({ requestId: "byid", promptTokenIds: promptTokens(30, 7), sampling: sampling({ maxTokens: 200 }) });
    const outputs = [];
    for await (const out of it) {
      outputs.push(out);
      if (outputs.length === 1) expect(engine.abort("byid")).toBe(true);
    }
    expect(outputs.at(-1)!.finishReason).toBe("cancelled");
    expect(engine.abort("byid")).toBe(false);
    expect(engine.abort("never-seen")).toBe(false);
  });

  it("aborts when the consumer breaks out of the loop", async () => {
    for await (const _ of engine.generate({ requestId: "brk", promptTokenIds: promptTokens(30, 8), sampling: sampling({ maxTokens: 500 }) })) {
      break;
    }
    await vi.waitFor(() => expect(engine.stats()).toMatchObject({ runningRequests: 0, kvBlocksUsed: 0 }));
    // The id is free again once the engine thread's cancellation has reached JavaScript, which
    // may be a moment after the native counters dropped.
    await vi.waitFor(async () => {
      const out = await collect(engine, "brk", promptTokens(5, 8), sampling({ maxTokens: 2 }));
      expect(out.finishReason).toBe("length");
    });
  });

  it("does not block the event loop while it steps", async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const out = await collect(engine, "loop", promptTokens(200, 9), sampling({ maxTokens: 50 }));
    clearInterval(timer);
    expect(out.tokenIds).toHaveLength(50);
    expect(ticks).toBeGreaterThan(3);
  });
});

describe("NativeEngine.load errors", () => {
  it("names a missing model folder", async () => {
    await expect(NativeEngine.load({ model: join(tmp, "nowhere") })).rejects.toThrow(/nowhere\/config\.json/);
  });

  it("names an unsupported architecture", async () => {
    const dir = modelVariant("arch", (c) => (c.architectures = ["GPT2LMHeadModel"]));
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(/GPT2LMHeadModel is not supported/);
  });

  it("names the file and tensor whose shape disagrees with config.json", async () => {
    const dir = modelVariant("shape", (c) => (c.intermediate_size = 128));
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(
      /model\.safetensors: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[256, 96\] but config\.json implies \[128, 96\]/,
    );
  });

  it("names a truncated safetensors file", async () => {
    const dir = modelVariant("trunc", () => {});
    const bytes = readFileSync(join(dir, "model.safetensors"));
    writeFileSync(join(dir, "model.safetensors"), bytes.subarray(0, bytes.length - 1000));
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(/model\.safetensors: tensor .* outside the file/);
  });

  it("names a corrupt safetensors header", async () => {
    const dir = modelVariant("corrupt", () => {}, { "model.safetensors": Buffer.from("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "latin1") });
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(/model\.safetensors has a corrupt header/);
  });

  it("names a tensor of an unsupported dtype", async () => {
    const header = JSON.stringify({ "model.embed_tokens.weight": { dtype: "I32", shape: [2, 2], data_offsets: [0, 16] } });
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(header.length));
    const dir = modelVariant("dtype", () => {}, { "model.safetensors": Buffer.concat([len, Buffer.from(header), Buffer.alloc(16)]) });
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(/tensor model\.embed_tokens\.weight has dtype I32/);
  });

  it("takes a dtype only on CUDA, and names the values it knows", async () => {
    await expect(NativeEngine.load({ model: testLlamaDir(), device: "cpu", dtype: "float16" })).rejects.toThrow(
      /dtype "float16" applies to device "cuda"; the CPU engine computes in fp32 and takes only "auto"/,
    );
    const cast = { model: testLlamaDir(), device: "cpu", dtype: "fp8" } as unknown as Parameters<typeof NativeEngine.load>[0];
    await expect(NativeEngine.load(cast)).rejects.toThrow(/dtype must be "auto", "bfloat16" or "float16", not "fp8"/);
    expect(engine.info.dtype).toBe("float32");
  });

  it("takes 2048 tokens a step on the CPU unless told otherwise, and says how many it takes", async () => {
    expect(engine.info.maxNumBatchedTokens).toBe(2048);
    const small = await NativeEngine.load({ model: testLlamaDir(), device: "cpu", kvCacheMemoryBytes: 1 << 20, maxNumBatchedTokens: 24 });
    try {
      expect(small.info.maxNumBatchedTokens).toBe(24);
    } finally {
      await small.close();
    }
    await expect(NativeEngine.load({ model: testLlamaDir(), device: "cpu", maxNumBatchedTokens: -1 })).rejects.toThrow(
      /max_num_seqs and max_num_batched_tokens must be positive/,
    );
  });

  it("names a tensor that config.json needs and the checkpoint lacks", async () => {
    const dir = modelVariant("layers", (c) => (c.num_hidden_layers = 3));
    await expect(NativeEngine.load({ model: dir })).rejects.toThrow(/has no tensor model\.layers\.2\./);
  });

  it("loads a sharded checkpoint through model.safetensors.index.json", async () => {
    // One shard listed by an index is the smallest sharded layout.
    const dir = modelVariant("sharded", () => {});
    cpSync(join(dir, "model.safetensors"), join(dir, "model-00001-of-00001.safetensors"));
    rmSync(join(dir, "model.safetensors"));
    const header = readFileSync(join(dir, "model-00001-of-00001.safetensors"));
    const names = Object.keys(JSON.parse(header.subarray(8, 8 + Number(header.readBigUInt64LE(0))).toString())).filter((n) => n !== "__metadata__");
    writeFileSync(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ weight_map: Object.fromEntries(names.map((n) => [n, "model-00001-of-00001.safetensors"])) }),
    );
    const e = await NativeEngine.load({ model: dir, device: "cpu", kvCacheMemoryBytes: 1 << 20 });
    try {
      const a = await collect(e, "s", promptTokens(9, 10), sampling({ maxTokens: 4 }));
      const b = await collect(engine, "s", promptTokens(9, 10), sampling({ maxTokens: 4 }));
      expect(a.tokenIds).toEqual(b.tokenIds);
    } finally {
      await e.close();
    }
  });
});
