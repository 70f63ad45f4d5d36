/**
 * The KV router's cost function and choice rule.
 *
 * For a request of R blocks (its full blocks plus a partial last block, if any), a worker w
 * that already holds the first overlap(w) of them costs
 *
 *   cost(w) = kvOverlapScoreWeight * prefillBlocks(w) + decodeBlocks(w)
 *   prefillBlocks(w) = R - overlap(w)
 *   decodeBlocks(w)  = active(w) + R - activeOverlap(w)
 *
 * prefillBlocks is the prefill this request still needs on w. decodeBlocks is the KV its
 * running batch would hold with this request in it, a proxy for how slow each decode step on
 * w gets: active(w) is what the requests the router sent there and has not seen finish hold
 * (shared blocks once), and the request adds its own blocks except the leading activeOverlap(w)
 * it shares with them. Both terms are in KV blocks. A weight above 1 favours cache hits (lower
 * TTFT); below 1 favours spreading load (lower ITL).
 *
 * Choice: with routerTemperature 0, the lowest cost wins and ties are broken uniformly at
 * random. Above 0, worker w is drawn with probability
 *
 *   p(w) = exp(-z(w) / T) / sum_v exp(-z(v) / T),   z(w) = (cost(w) - min cost) / (max cost - min cost)
 *
 * Costs are normalised to [0, 1] first so that T does not depend on prompt length or load
 * scale: T = 1 gives the cheapest worker e (about 2.7) times the weight of the dearest.
 */

export interface CostInputs {
  /** R: the request's blocks, a partial last one included. */
  requestBlocks: number;
  /** overlap(w): leading request blocks cached on w or held there by running requests. */
  overlapBlocks: number;
  /** active(w) */
  activeBlocks: number;
  /** activeOverlap(w): leading request blocks held by running requests on w. */
  activeOverlapBlocks: number;
  kvOverlapScoreWeight: number;
}

export function prefillBlocks(inputs: CostInputs): number {
  return inputs.requestBlocks - inputs.overlapBlocks;
}

export function decodeBlocks(inputs: CostInputs): number {
  return inputs.activeBlocks + inputs.requestBlocks - inputs.activeOverlapBlocks;
}

export function workerCost(inputs: CostInputs): number {
  return inputs.kvOverlapScoreWeight * prefillBlocks(inputs) + decodeBlocks(inputs);
}

/** Index of the chosen entry of `costs` (non-empty), by the rule above. */
export function chooseByCost(costs: readonly number[], temperature: number, random: () => number = Math.random): number {
  if (costs.length === 1) return 0;
  let min = Infinity;
  let max = -Infinity;
  for (const cost of costs) {
    if (cost < min) min = cost;
    if (cost > max) max = cost;
  }
  if (temperature <= 0 || max === min) {
    const cheapest: number[] = [];
    costs.forEach((cost, i) => cost === min && cheapest.push(i));
    return cheapest[Math.floor(random() * cheapest.length)];
  }
  const weights = costs.map((cost) => Math.exp(-(cost - min) / (max - min) / temperature));
  let draw = random() * weights.reduce((a, b) => a + b, 0);
  for (let i = 0; i < weights.length; i++) {
    draw -= weights[i];
    if (draw < 0) return i;
  }
  return weights.length - 1;
}

/** The softmax probabilities `chooseByCost` draws from (for tests and debugging). */
export function choiceProbabilities(costs: readonly number[], temperature: number): number[] {
  const min = Math.min(...costs);
  const max = Math.max(...costs);
  if (temperature <= 0 || max === min) {
    const cheapest = costs.filter((c) => c === min).length;
    return costs.map((c) => (c === min ? 1 / cheapest : 0));
  }
  const weights = costs.map((cost) => Math.exp(-(cost - min) / (max - min) / temperature));
  const total = weights.reduce((a, b) => a + b, 0);
  return weights.map((w) => w / total);
}
