/**
 * The random models the native-engine tests run (and test/fixtures/make_reference.py was run
 * on): Qwen3's and Llama's layouts with tiny dimensions and a larger init scale than the
 * default model's, so greedy outputs vary from token to token. Regenerated deterministically.
 */
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { ensureRandomModel, TINY_QWEN3, type RandomModelSpec } from "../../src/model/random_model.ts";

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), "../..");
/** Git-ignored; the fixture script receives these folders from here. */
export const TEST_MODEL_DIR = join(REPO_ROOT, ".cache", "native-test-models");

export const TEST_QWEN3: RandomModelSpec = { ...TINY_QWEN3, initStd: 0.3, seed: 7 };

export const TEST_LLAMA: RandomModelSpec = {
  architecture: "LlamaForCausalLM",
  vocabSize: 4096,
  hiddenSize: 96,
  intermediateSize: 256,
  numLayers: 2,
  numHeads: 6,
  numKvHeads: 2,
  headDim: 16,
  maxPositionEmbeddings: 2048,
  ropeTheta: 10_000,
  rmsNormEps: 1e-5,
  tieWordEmbeddings: false,
  dtype: "F16",
  seed: 8,
  initStd: 0.3,
};

/**
 * Tiny Qwen3 layouts with the head sizes the tensor-core decode attention is built for (head_dim
 * 64 and 128, GQA groups 2 and 4); the other test models have 16-dim heads.
 */
export const TEST_QWEN3_HD128: RandomModelSpec = {
  ...TEST_QWEN3,
  vocabSize: 4096,
  hiddenSize: 128,
  intermediateSize: 256,
  numHeads: 4,
  numKvHeads: 2,
  headDim: 128,
  seed: 9,
};
export const TEST_QWEN3_HD64_GQA4: RandomModelSpec = { ...TEST_QWEN3_HD128, numHeads: 8, numKvHeads: 2, headDim: 64, seed: 10 };

export function testQwen3Dir(): string {
  return ensureRandomModel(TEST_QWEN3, "test-qwen3", TEST_MODEL_DIR);
}

export function testLlamaDir(): string {
  return ensureRandomModel(TEST_LLAMA, "test-llama", TEST_MODEL_DIR);
}

export function testQwen3Hd128Dir(): string {
  return ensureRandomModel(TEST_QWEN3_HD128, "test-qwen3-hd128", TEST_MODEL_DIR);
}

export function testQwen3Hd64Gqa4Dir(): string {
  return ensureRandomModel(TEST_QWEN3_HD64_GQA4, "test-qwen3-hd64-gqa4", TEST_MODEL_DIR);
}

/** Deterministic pseudo-random token ids in [lo, hi). */
export function promptTokens(length: number, seed: number, lo = 0, hi = 4096): number[] {
  let x = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push(lo + (x % (hi - lo)));
  }
  return out;
}
