/**
 * Issue 5's benchmark: the KV router.
 *
 * 1. The indexer alone: KV events applied per second (64 workers), and the time to score a
 *    4k-token prompt (256 blocks of 16) against 64 workers that all hold it, with the block
 *    hashing measured apart.
 * 2. Routing policies on a shared workload: 8 MockerEngine workers in this process, many users
 *    sharing a few long system prompts and holding multi-turn conversations, routed by kv,
 *    round-robin, random, and an oracle that knows every cache exactly and always picks the
 *    longest cached prefix (the best hit rate a router can get). Every policy gets the same
 *    requests and fresh engines. Engines publish KV events straight into the selector's
 *    indexer (kvEventSource "external"), with the wire encoding a worker would use.
 *
 * Run: `npx tsx bench/kv_router.ts [--users 64] [--turns 5] [--speedup 10] [--skip-indexer] [--skip-routing]`
 */
import { create } from "@bufbuild/protobuf";
import { arch, cpus } from "node:os";
import { parseArgs } from "node:util";
import { GetInfoResponseSchema, KvEventBatchSchema, KvEventSchema, type KvEventBatch } from "../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../src/engine/block_hash.ts";
import type { SamplingParams } from "../src/engine/engine.ts";
import { MockerEngine } from "../src/engine/mocker/mocker_engine.ts";
import { KvIndexer } from "../src/router/kv/kv_indexer.ts";
import { KvSelector } from "../src/router/kv/kv_selector.ts";
import type { WorkerClient, WorkerHandle } from "../src/router/worker_handle.ts";
import { RandomSelector, RoundRobinSelector, type Selection, type SelectionRequest, type WorkerSelector } from "../src/router/worker_selector.ts";
import { toWireEvent } from "../src/worker/kv_event_publisher.ts";
import { seededRandom } from "../src/util/seeded_random.ts";

const { values } = parseArgs({
  options: {
    users: { type: "string", default: "64" },
    turns: { type: "string", default: "5" },
    speedup: { type: "string", default: "10" },
    workers: { type: "string", default: "8" },
    "num-gpu-blocks": { type: "string", default: "2048" },
    "system-prompts": { type: "string", default: "4" },
    "system-tokens": { type: "string", default: "2048" },
    /** kvOverlapScoreWeight values to run the kv policy with, comma-separated. */
    "kv-weights": { type: "string", default: "1,2" },
    "skip-indexer": { type: "boolean", default: false },
    "skip-routing": { type: "boolean", default: false },
  },
});

const rng = seededRandom;

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

// ---------------------------------------------------------------------------------------------
// 1. Indexer alone

function randomHash(random: () => number): bigint {
  return (BigInt(Math.floor(random() * 2 ** 32)) << 32n) | BigInt(Math.floor(random() * 2 ** 32));
}

/**
 * Per worker, a stream of batches (`eventsPerBatch` events each) that stores chains of
 * `blocksPerEvent`-block BlockStored events and removes each chain `liveChains` chains later,
 * so the tree stays at a steady size. Half of every chain's blocks are a prefix shared by all
 * workers (a system prompt), which makes nodes with many holders.
 */
function eventStreams(workers: number, eventsPerWorker: number, blocksPerEvent: number, eventsPerBatch: number): KvEventBatch[][] {
  const random = rng(42);
  const shared = Array.from({ length: 4096 }, () => randomHash(random));
  const liveChains = 64;
  const streams: KvEventBatch[][] = [];
  for (let w = 0; w < workers; w++) {
    const batches: KvEventBatch[] = [create(KvEventBatchSchema, { sequence: 0n, workerId: `w${w}`, events: [{ event: { case: "allBlocksCleared", value: {} } }] })];
    const chains: bigint[][] = [];
    let pending: KvEventBatch["events"] = [];
    let sequence = 0n;
    const flush = () => {
      batches.push(create(KvEventBatchSchema, { sequence: ++sequence, workerId: `w${w}`, events: pending }));
      pending = [];
    };
    let events = 0;
    let sharedAt = 0;
    while (events < eventsPerWorker) {
      const chain: bigint[] = [];
      for (let i = 0; i < blocksPerEvent; i++) chain.push(i % 2 === 0 ? shared[sharedAt++ % shared.length] : randomHash(random));
      chains.push(chain);
      pending.push(create(KvEventSchema, { event: { case: "blockStored", value: { blockHashes: chain, blockSize: 16 } } }));
      events++;
      if (chains.length > liveChains) {
        const old = chains.shift()!;
        pending.push(create(KvEventSchema, { event: { case: "blockRemoved", value: { blockHashes: old } } }));
        events++;
      }
      if (pending.length >= eventsPerBatch) flush();
    }
    if (pending.length > 0) flush();
    streams.push(batches);
  }
  return streams;
}

function benchEvents(blocksPerEvent: number): { eventsPerSecond: number; blocksPerSecond: number; treeBlocks: number } {
  const workers = 64;
  // About 2M block operations in all.
  const streams = eventStreams(workers, Math.ceil(32_000 / blocksPerEvent), blocksPerEvent, 16);
  let best = { eventsPerSecond: 0, blocksPerSecond: 0, treeBlocks: 0 };
  for (let round = 0; round < 3; round++) {
    const indexer = new KvIndexer();
    let events = 0;
    let blocks = 0;
    const started = performance.now();
    // Interleave workers batch by batch, as events from many workers arrive.
    const longest = Math.max(...streams.map((s) => s.length));
    for (let b = 0; b < longest; b++) {
      for (let w = 0; w < workers; w++) {
        const batch = streams[w][b];
        if (!batch) continue;
        if (indexer.applyEvents(`w${w}`, batch) !== "applied") throw new Error("benchmark stream out of sequence");
        events += batch.events.length;
        for (const e of batch.events) if (e.event.case === "blockStored" || e.event.case === "blockRemoved") blocks += e.event.value.blockHashes.length;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    if (events / seconds > best.eventsPerSecond) best = { eventsPerSecond: events / seconds, blocksPerSecond: blocks / seconds, treeBlocks: indexer.tree.totalEntries() };
  }
  return best;
}

function timeIt(iterations: number, fn: () => void): number {
  for (let i = 0; i < Math.min(200, iterations); i++) fn();
  const started = performance.now();
  for (let i = 0; i < iterations; i++) fn();
  return ((performance.now() - started) * 1000) / iterations;
}

function fakeHandle(id: string, blockSize: number): WorkerHandle {
  return {
    id,
    url: `inproc://${id}`,
    client: {} as WorkerClient,
    info: create(GetInfoResponseSchema, { workerId: id, model: "bench", blockSize, load: { kvBlocksTotal: 1 << 20 } }),
    inFlight: 0,
  };
}

function benchMatch(): Record<string, number> {
  const workers = 64;
  const random = rng(7);
  const prompt = Array.from({ length: 4096 }, () => Math.floor(random() * 150_000));
  const hashes = blockHashes(prompt, 16);
  const selector = new KvSelector({ kvEventSource: "external", loadPollIntervalMs: 0 });
  const handles = Array.from({ length: workers }, (_, w) => fakeHandle(`w${w}`, 16));
  for (const h of handles) selector.workerAdded(h);
  // Every worker holds the whole prompt (the worst case: no worker drops out of the match
  // early) and 4096 blocks of its own, so the tree has 64 x 4352 entries.
  for (let w = 0; w < workers; w++) {
    selector.indexer.applyEvents(`w${w}`, create(KvEventBatchSchema, {
      sequence: 0n,
      events: [
        { event: { case: "allBlocksCleared", value: {} } },
        { event: { case: "blockStored", value: { blockHashes: hashes } } },
        { event: { case: "blockStored", value: { blockHashes: Array.from({ length: 4096 }, () => randomHash(random)) } } },
      ],
    }));
  }
  const hashUs = timeIt(2000, () => blockHashes(prompt, 16));
  const matchAllUs = timeIt(2000, () => selector.indexer.findMatches(hashes));
  // Staggered: worker w holds the first 4w blocks only.
  const staggered = new KvIndexer();
  for (let w = 0; w < workers; w++) {
    staggered.applyEvents(`w${w}`, create(KvEventBatchSchema, { sequence: 0n, events: [{ event: { case: "allBlocksCleared", value: {} } }, { event: { case: "blockStored", value: { blockHashes: hashes.slice(0, 4 * w) } } }] }));
  }
  const matchStaggeredUs = timeIt(2000, () => staggered.findMatches(hashes));
  const scoreUs = timeIt(2000, () => selector.score(prompt, handles));
  return { hashUs, matchAllUs, matchStaggeredUs, scoreUs };
}

// ---------------------------------------------------------------------------------------------
// 2. Routing policies on mocker workers

interface Turn {
  user: number;
  /** The new user message of this turn; the prompt is system + history + this. */
  message: number[];
  maxTokens: number;
  thinkMs: number;
}

interface Workload {
  systemPrompts: number[][];
  userSystem: number[];
  turns: Turn[][];
  startDelayMs: number[];
}

function makeWorkload(users: number, turnsPerUser: number, systemPromptCount: number, systemTokens: number): Workload {
  const random = rng(1234);
  const tokensOf = (n: number) => Array.from({ length: n }, () => 1 + Math.floor(random() * 150_000));
  const systemPrompts = Array.from({ length: systemPromptCount }, () => tokensOf(systemTokens));
  const userSystem = Array.from({ length: users }, (_, u) => u % systemPromptCount);
  const turns = Array.from({ length: users }, (_, user) =>
    Array.from({ length: turnsPerUser }, () => ({
      user,
      message: tokensOf(100 + Math.floor(random() * 300)),
      maxTokens: 64 + Math.floor(random() * 128),
      thinkMs: 50 + random() * 200,
    })),
  );
  const startDelayMs = Array.from({ length: users }, () => random() * 2000);
  return { systemPrompts, userSystem, turns, startDelayMs };
}

/** Picks the worker with the longest cached (or in-flight) prefix; ties by fewest active blocks. */
class OracleSelector implements WorkerSelector {
  readonly kv = new KvSelector({ kvEventSource: "external", loadPollIntervalMs: 0 });
  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const scored = this.kv.score(request.tokenIds, candidates);
    let best = scored[0];
    for (const s of scored) {
      if (s.overlapBlocks > best.overlapBlocks || (s.overlapBlocks === best.overlapBlocks && s.activeBlocks < best.activeBlocks)) best = s;
    }
    this.kv.active.add(request.requestId, best.worker.id, best.blockHashes, best.requestBlocks);
    return { worker: best.worker, reason: "oracle", overlapBlocks: best.overlapBlocks };
  }
  requestFinished(requestId: string, worker: WorkerHandle): void {
    this.kv.active.finish(requestId, worker.id);
  }
}

interface PolicyReport {
  policy: string;
  requests: number;
  hitRate: number;
  ttftP50: number;
  ttftP90: number;
  itlMean: number;
  itlP90: number;
  outputTokensPerSecond: number;
  seconds: number;
}

const SAMPLING: Omit<SamplingParams, "maxTokens"> = {
  temperature: 0, topP: 1, topK: 0, minP: 0, minTokens: 0, stopTokenIds: [], ignoreEos: true,
  presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1,
};

async function runPolicy(policy: string, workload: Workload, options: { workers: number; speedup: number; numGpuBlocks: number; kvWeight: number }): Promise<PolicyReport> {
  const blockSize = 16;
  const engines = Array.from({ length: options.workers }, () => new MockerEngine({ blockSize, numGpuBlocks: options.numGpuBlocks, speedupRatio: options.speedup, maxNumSeqs: 256, maxNumBatchedTokens: 8192 }));
  const handles = engines.map((_, i) => fakeHandle(`worker-${i}`, blockSize));
  const oracle = policy === "oracle" ? new OracleSelector() : undefined;
  const kv = policy.startsWith("kv") ? new KvSelector({ kvEventSource: "external", loadPollIntervalMs: 0, kvOverlapScoreWeight: options.kvWeight }) : oracle?.kv;
  const selector: WorkerSelector = oracle ?? kv ?? (policy === "round-robin" ? new RoundRobinSelector() : new RandomSelector());
  const unsubscribes = engines.map((engine, i) => {
    // The events a worker would publish, numbered and wire-encoded, applied on arrival.
    let sequence = 0n;
    if (kv) kv.indexer.applyEvents(handles[i].id, create(KvEventBatchSchema, { sequence, events: engine.kvSnapshot().map(toWireEvent) }), { snapshot: true });
    return engine.onKvEvents((events) => {
      kv?.indexer.applyEvents(handles[i].id, create(KvEventBatchSchema, { sequence: ++sequence, timestampMs: BigInt(Date.now()), events: events.map(toWireEvent) }));
    });
  });
  for (const h of handles) selector.workerAdded?.(h);

  const ttfts: number[] = [];
  const itls: number[] = [];
  let promptTokens = 0;
  let cachedTokens = 0;
  let outputTokens = 0;
  let requests = 0;
  const started = performance.now();
  await Promise.all(
    workload.turns.map(async (turns, user) => {
      await new Promise((resolve) => setTimeout(resolve, workload.startDelayMs[user]));
      let history = [...workload.systemPrompts[workload.userSystem[user]]];
      for (const [t, turn] of turns.entries()) {
        const prompt = [...history, ...turn.message];
        const requestId = `u${user}-t${t}`;
        const { worker } = await selector.select({ requestId, tokenIds: prompt }, handles);
        const engine = engines[handles.indexOf(worker)];
        const sent = performance.now();
        let last = sent;
        let first = true;
        const output: number[] = [];
        try {
          for await (const out of engine.generate({ requestId, promptTokenIds: prompt, sampling: { ...SAMPLING, maxTokens: turn.maxTokens } })) {
            const now = performance.now();
            if (out.tokenIds.length > 0) {
              if (first) ttfts.push(now - sent);
              else itls.push((now - last) / out.tokenIds.length);
              first = false;
              last = now;
              output.push(...out.tokenIds);
            }
            if (out.finishReason) {
              promptTokens += out.usage.promptTokens;
              cachedTokens += out.usage.cachedTokens;
            }
          }
        } finally {
          selector.requestFinished?.(requestId, worker);
        }
        outputTokens += output.length;
        requests++;
        history = [...prompt, ...output];
        await new Promise((resolve) => setTimeout(resolve, turn.thinkMs));
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  for (const unsubscribe of unsubscribes) unsubscribe();
  await selector.close?.();
  await Promise.all(engines.map((e) => e.close()));
  ttfts.sort((a, b) => a - b);
  itls.sort((a, b) => a - b);
  return {
    policy,
    requests,
    hitRate: cachedTokens / promptTokens,
    ttftP50: percentile(ttfts, 0.5),
    ttftP90: percentile(ttfts, 0.9),
    itlMean: itls.reduce((a, b) => a + b, 0) / itls.length,
    itlP90: percentile(itls, 0.9),
    outputTokensPerSecond: outputTokens / seconds,
    seconds,
  };
}

// ---------------------------------------------------------------------------------------------

console.log(`# KV router benchmark — ${cpus()[0]?.model ?? "cpu"} (${arch()}), Node ${process.version}`);
if (!values["skip-indexer"]) {
  console.log("\n## Indexer (64 workers)\n");
  console.log("| events | events/s | blocks/s | entries after |");
  console.log("| --- | ---: | ---: | ---: |");
  for (const blocksPerEvent of [1, 16]) {
    const r = benchEvents(blocksPerEvent);
    console.log(`| ${blocksPerEvent}-block BlockStored/BlockRemoved, 16 per batch | ${(r.eventsPerSecond / 1e6).toFixed(2)} M | ${(r.blocksPerSecond / 1e6).toFixed(2)} M | ${r.treeBlocks} |`);
  }
  const m = benchMatch();
  console.log("\n| 4096-token prompt (256 blocks of 16), 64 workers | µs |");
  console.log("| --- | ---: |");
  console.log(`| hash the prompt (blockHashes) | ${m.hashUs.toFixed(1)} |`);
  console.log(`| match, all 64 workers hold all 256 blocks | ${m.matchAllUs.toFixed(1)} |`);
  console.log(`| match, worker w holds the first 4w blocks | ${m.matchStaggeredUs.toFixed(1)} |`);
  console.log(`| KvSelector.score (hash + match + costs of 64) | ${m.scoreUs.toFixed(1)} |`);
}

if (!values["skip-routing"]) {
  const users = Number(values.users);
  const turns = Number(values.turns);
  const workers = Number(values.workers);
  const speedup = Number(values.speedup);
  const numGpuBlocks = Number(values["num-gpu-blocks"]);
  const workload = makeWorkload(users, turns, Number(values["system-prompts"]), Number(values["system-tokens"]));
  console.log(`\n## Routing: ${workers} mocker workers (speedup ${speedup}, ${numGpuBlocks} blocks of 16 each), ${users} users x ${turns} turns, ${workload.systemPrompts.length} system prompts of ${values["system-tokens"]} tokens\n`);
  // Warm the JIT on the mocker, selectors and indexer, so the first policy measured pays no more than the rest.
  for (const policy of ["kv (warm-up)", "round-robin"]) {
    await runPolicy(policy, makeWorkload(32, 2, 2, 1024), { workers, speedup, numGpuBlocks, kvWeight: 1 });
  }
  const reports: PolicyReport[] = [];
  for (const kvWeight of values["kv-weights"].split(",").map(Number)) {
    reports.push(await runPolicy(`kv (weight ${kvWeight})`, workload, { workers, speedup, numGpuBlocks, kvWeight }));
  }
  for (const policy of ["round-robin", "random", "oracle"]) {
    reports.push(await runPolicy(policy, workload, { workers, speedup, numGpuBlocks, kvWeight: 1 }));
  }
  const oracle = reports.find((r) => r.policy === "oracle")!;
  console.log("| policy | requests | prefix hit rate | of oracle | TTFT p50 ms | TTFT p90 ms | ITL mean ms | ITL p90 ms | output tok/s | wall s |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of reports) {
    console.log(
      `| ${r.policy} | ${r.requests} | ${(100 * r.hitRate).toFixed(1)}% | ${(100 * r.hitRate / oracle.hitRate).toFixed(0)}% | ${r.ttftP50.toFixed(1)} | ${r.ttftP90.toFixed(1)} | ${r.itlMean.toFixed(2)} | ${r.itlP90.toFixed(2)} | ${r.outputTokensPerSecond.toFixed(0)} | ${r.seconds.toFixed(1)} |`,
    );
  }
  const rr = reports.find((r) => r.policy === "round-robin")!;
  for (const kv of reports.filter((r) => r.policy.startsWith("kv"))) {
    console.log(`\n${kv.policy} vs round-robin: TTFT p50 ${(rr.ttftP50 / kv.ttftP50).toFixed(2)}x lower; hit rate ${(100 * kv.hitRate / oracle.hitRate).toFixed(0)}% of the oracle's`);
  }
}
