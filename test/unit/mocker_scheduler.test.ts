import { describe, expect, it } from "vitest";
import type { SamplingParams } from "../../src/engine/engine.ts";
import { BlockPool } from "../../src/engine/mocker/block_pool.ts";
import { Scheduler, type StepPlan } from "../../src/engine/mocker/scheduler.ts";
import { Sequence } from "../../src/engine/mocker/sequence.ts";
import { seededRandom } from "../../src/util/seeded_random.ts";

const BS = 4;

const rng = seededRandom;

const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);

function sampling(maxTokens: number): SamplingParams {
  return {
    temperature: 1, topP: 1, topK: 0, minP: 0, maxTokens, minTokens: 0, stopTokenIds: [], ignoreEos: true,
    presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
  };
}

function setup(numBlocks: number, maxNumSeqs = 16, maxNumBatchedTokens = 64, enablePrefixCaching = true) {
  const pool = new BlockPool({ numBlocks, blockSize: BS, enablePrefixCaching });
  const scheduler = new Scheduler(pool, { maxNumSeqs, maxNumBatchedTokens });
  const submit = (id: string, prompt: number[], maxTokens = 4) => {
    const seq = new Sequence(id, prompt, sampling(maxTokens), BS);
    scheduler.add(seq);
    return seq;
  };
  return { pool, scheduler, submit };
}

/** What the engine does after a step: commit the computed KV, sample after a last chunk, finish. */
function runStep(scheduler: Scheduler, plan: StepPlan, finished: Sequence[] = []): void {
  for (const { seq, numNewTokens } of plan.scheduled) {
    scheduler.commitComputed(seq, numNewTokens);
    if (seq.numComputedTokens < seq.numTokens) continue;
    seq.appendToken(7000 + seq.numOutputTokens);
    if (seq.numOutputTokens >= seq.sampling.maxTokens) {
      scheduler.remove(seq);
      finished.push(seq);
    }
  }
}

const chunks = (plan: StepPlan) => plan.scheduled.map((c) => [c.seq.requestId, c.numNewTokens]);

describe("mocker Scheduler", () => {
  it("runs at most maxNumSeqs requests and keeps the rest waiting in arrival order", () => {
    const { scheduler, submit } = setup(64, 2);
    submit("a", range(5));
    submit("b", range(5, 100));
    submit("c", range(5, 200));
    const plan = scheduler.schedule();
    expect(chunks(plan)).toEqual([["a", 5], ["b", 5]]);
    expect(scheduler.waiting.map((s) => s.requestId)).toEqual(["c"]);
  });

  it("splits a prompt longer than the token budget into chunks and samples only after the last one", () => {
    const { scheduler, submit } = setup(64, 4, 32);
    const seq = submit("long", range(100));
    const sizes: number[] = [];
    while (seq.numOutputTokens === 0) {
      const plan = scheduler.schedule();
      sizes.push(plan.scheduled[0].numNewTokens);
      expect(plan.work.prefillTokens).toBe(plan.scheduled[0].numNewTokens);
      runStep(scheduler, plan);
    }
    expect(sizes).toEqual([32, 32, 32, 4]);
    expect(seq.numComputedTokens).toBe(100);
  });

  it("gives every running decode its token before any prefill chunk gets the rest of the budget", () => {
    const { scheduler, submit } = setup(64, 4, 8);
    submit("a", range(4));
    runStep(scheduler, scheduler.schedule()); // a's prefill
    submit("b", range(40, 100));
    const plan = scheduler.schedule();
    expect(chunks(plan)).toEqual([["a", 1], ["b", 7]]);
    expect(plan.work).toEqual({ prefillTokens: 7, decodeSeqs: 1, decodeContextTokens: 5 });
    runStep(scheduler, plan);
    // b is now a running prefill, admitted before a's next decode in the queue order; a still goes first.
    expect(chunks(scheduler.schedule())).toEqual([["a", 1], ["b", 7]]);
  });

  it("serves all but the last token of a fully cached prompt from the prefix cache", () => {
    const { pool, scheduler, submit } = setup(64);
    const prompt = range(8);
    const finished: Sequence[] = [];
    submit("first", prompt, 1);
    runStep(scheduler, scheduler.schedule(), finished);
    expect(finished).toHaveLength(1);

    const again = submit("again", prompt);
    const longer = submit("longer", [...prompt, 8]);
    expect(chunks(scheduler.schedule())).toEqual([["again", 4], ["longer", 1]]);
    expect(again.numCachedTokens).toBe(4);
    expect(longer.numCachedTokens).toBe(8);
    expect(longer.blockTable[0]).toBe(again.blockTable[0]); // one block, two references
    expect(longer.blockTable[0].refCount).toBe(2);
    expect(pool.prefixCacheQueryTokens).toBe(8 + 8 + 9);
    expect(pool.prefixCacheHitTokens).toBe(0 + 4 + 8);
  });

  it("preempts the newest running request when blocks run out and requeues it at the front", () => {
    const { pool, scheduler, submit } = setup(4);
    const a = submit("a", range(7), 4);
    const b = submit("b", range(7, 100), 4);
    const c = submit("c", range(3, 200), 1);
    const finished: Sequence[] = [];
    runStep(scheduler, scheduler.schedule(), finished); // a and b take all 4 blocks; c waits
    expect(scheduler.waiting).toEqual([c]);
    runStep(scheduler, scheduler.schedule(), finished); // both decode into their second block
    const plan = scheduler.schedule(); // a needs a third block: b, the newest, gives way
    expect(plan.preempted).toEqual([b]);
    expect(chunks(plan)).toEqual([["a", 1]]);
    expect(scheduler.waiting).toEqual([b, c]);
    expect(b.blockTable).toEqual([]);
    expect(b.numComputedTokens).toBe(0);
    expect(scheduler.numPreemptions).toBe(1);
    runStep(scheduler, plan, finished);

    for (let step = 0; step < 50 && scheduler.hasWork; step++) runStep(scheduler, scheduler.schedule(), finished);
    expect(finished.map((s) => s.requestId)).toEqual(["a", "c", "b"]); // c is one token long
    // b was recomputed from its prompt and the outputs it had, then carried on where it stopped.
    expect(b.outputTokenIds).toEqual([7000, 7001, 7002, 7003]);
    expect(pool.numUsedBlocks).toBe(0);
    expect(a.numPreemptions).toBe(0);
  });

  it("frees the blocks of a removed request whether it was running or waiting", () => {
    const { pool, scheduler, submit } = setup(8, 1);
    const a = submit("a", range(10));
    const b = submit("b", range(10, 100));
    scheduler.schedule();
    expect(pool.numUsedBlocks).toBe(3);
    scheduler.remove(a);
    scheduler.remove(b);
    expect(pool.numUsedBlocks).toBe(0);
    expect(scheduler.hasWork).toBe(false);
  });

  it("respects the budget and maxNumSeqs, keeps decodes first and completes every request under a tiny pool", () => {
    let preemptions = 0;
    for (let seed = 1; seed <= 30; seed++) {
      const random = rng(seed);
      const budget = 4 + Math.floor(random() * 40);
      const maxNumSeqs = 1 + Math.floor(random() * 6);
      const numBlocks = 12 + Math.floor(random() * 12);
      const { pool, scheduler, submit } = setup(numBlocks, maxNumSeqs, budget, random() < 0.8);
      const system = range(12, 9000);
      const requests: Sequence[] = [];
      const finished: Sequence[] = [];
      let next = 0;
      for (let step = 0; step < 5000 && (next < 25 || scheduler.hasWork); step++) {
        if (next < 25 && random() < 0.4) {
          const prompt = [...system.slice(0, Math.floor(random() * 13)), ...range(1 + Math.floor(random() * 16), 100 * next)];
          const maxTokens = 1 + Math.floor(random() * 10);
          // The engine rejects what can never fit; the scheduler is only given what can.
          if (scheduler.maxBlocksFor(prompt.length + maxTokens) <= numBlocks) requests.push(submit(`r${next}`, prompt, maxTokens));
          next++;
        }
        const plan = scheduler.schedule();
        const total = plan.scheduled.reduce((n, c) => n + c.numNewTokens, 0);
        expect(total).toBeLessThanOrEqual(budget);
        expect(scheduler.running.length).toBeLessThanOrEqual(maxNumSeqs);
        const prefill = plan.scheduled.map((c) => c.seq.isPrefilling);
        expect(prefill).toEqual([...prefill].sort()); // false (decode) before true (prefill)
        const planned = new Set(plan.scheduled.map((c) => c.seq));
        for (const seq of scheduler.running) {
          if (!planned.has(seq)) expect(total).toBe(budget);
          expect(seq.blockTable.length * BS).toBeGreaterThanOrEqual(seq.numComputedTokens);
        }
        const held = new Set(scheduler.running.flatMap((s) => s.blockTable));
        expect(pool.numUsedBlocks).toBe(held.size);
        for (const seq of scheduler.waiting) expect(seq.blockTable).toEqual([]);
        runStep(scheduler, plan, finished);
      }
      expect(finished).toHaveLength(requests.length);
      for (const seq of requests) expect(seq.numOutputTokens).toBe(seq.sampling.maxTokens);
      expect(pool.numUsedBlocks).toBe(0);
      preemptions += scheduler.numPreemptions;
    }
    expect(preemptions).toBeGreaterThan(0);
  });
});
