import { describe, expect, it } from "vitest";
import { chooseByCost, choiceProbabilities, workerCost } from "../../src/router/kv/scoring.ts";

/** A deterministic uniform sequence. */
function sequence(...values: number[]): () => number {
  let i = 0;
  return () => values[i++ % values.length];
}

describe("cost and choice", () => {
  it("weighs blocks left to prefill against the blocks the worker's batch would hold", () => {
    const base = { requestBlocks: 10, overlapBlocks: 6, activeBlocks: 3, activeOverlapBlocks: 0, kvOverlapScoreWeight: 1 };
    // prefill 10 - 6 = 4, decode 3 + 10 = 13
    expect(workerCost(base)).toBe(17);
    expect(workerCost({ ...base, kvOverlapScoreWeight: 2 })).toBe(21);
    // Blocks shared with running requests add no decode load.
    expect(workerCost({ ...base, activeOverlapBlocks: 6 })).toBe(11);
    expect(workerCost({ ...base, overlapBlocks: 0, activeBlocks: 0, kvOverlapScoreWeight: 0 })).toBe(10);
  });

  it("picks the lowest cost at temperature 0", () => {
    expect(chooseByCost([5, 2, 9], 0, sequence(0.99))).toBe(1);
  });

  it("breaks ties at random among the cheapest at temperature 0", () => {
    const picks = new Set([0, 0.3, 0.6, 0.9].map((r) => chooseByCost([3, 1, 1, 1, 7], 0, () => r)));
    expect(picks).toEqual(new Set([1, 2, 3]));
  });

  it("draws from a softmax over normalised costs above temperature 0", () => {
    const probabilities = choiceProbabilities([0, 50, 100], 1);
    const weights = [1, Math.exp(-0.5), Math.exp(-1)];
    const total = weights.reduce((a, b) => a + b);
    probabilities.forEach((p, i) => expect(p).toBeCloseTo(weights[i] / total, 12));
    // Normalisation makes the distribution independent of the cost scale.
    expect(choiceProbabilities([0, 5, 10], 1)).toEqual(probabilities);
    // Drawing follows the cumulative distribution.
    expect(chooseByCost([0, 50, 100], 1, () => 0)).toBe(0);
    expect(chooseByCost([0, 50, 100], 1, () => probabilities[0] + 0.01)).toBe(1);
    expect(chooseByCost([0, 50, 100], 1, () => 0.999)).toBe(2);
  });

  it("approaches uniform as the temperature grows and greedy as it shrinks", () => {
    const hot = choiceProbabilities([0, 10, 20], 1000);
    hot.forEach((p) => expect(p).toBeCloseTo(1 / 3, 2));
    const cold = choiceProbabilities([0, 10, 20], 0.01);
    expect(cold[0]).toBeGreaterThan(0.999);
  });

  it("samples in proportion to the softmax", () => {
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const counts = [0, 0, 0];
    for (let i = 0; i < 20000; i++) counts[chooseByCost([0, 1, 2], 0.5, random)]++;
    const expected = choiceProbabilities([0, 1, 2], 0.5);
    counts.forEach((c, i) => expect(c / 20000).toBeCloseTo(expected[i], 1));
  });
});
