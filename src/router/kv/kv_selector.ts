/**
 * KV-aware worker selection (`--router-mode kv`): send each request to the worker that can
 * serve it soonest, counting the prefix it already holds in KV cache (cost formula and choice
 * rule in scoring.ts).
 *
 * Where the overlap comes from: the indexer, fed by each worker's KvEvents stream (subscribed
 * in workerAdded, stopped in workerRemoved/close), or, with `useKvEvents: false`, by the
 * router's predictions of what its own routing put in each cache, expiring after
 * `predictionTtlMs`. Either way, blocks of requests routed to a worker and still running count
 * as held there too, since their BlockStored events may not have arrived yet.
 *
 * Where the load comes from: the router's bookkeeping of requests it sent and has not seen
 * finish (the cost's decode term), and each worker's polled GetInfo LoadMetrics (the busy
 * check: a worker whose KV usage is over `busyThreshold` or whose waiting queue is over
 * `maxWaitingRequests` is not chosen).
 */
import { Registry } from "prom-client";
import type { LoadMetrics } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../engine/block_hash.ts";
import type { Logger } from "../../runtime/logger.ts";
import { RouterError } from "../router.ts";
import type { WorkerHandle } from "../worker_handle.ts";
import type { Selection, SelectionRequest, WorkerSelector } from "../worker_selector.ts";
import { ActiveSequences } from "./active_sequences.ts";
import { ApproxKvPredictor } from "./approx_predictor.ts";
import { followKvEvents } from "./kv_event_subscriber.ts";
import { KvIndexer } from "./kv_indexer.ts";
import { createKvRouterMetrics, type KvRouterMetrics } from "./kv_metrics.ts";
import { pollLoad } from "./load_poller.ts";
import { chooseByCost, workerCost } from "./scoring.ts";

export interface KvSelectorOptions {
  /** Tokens per KV block, for workers whose GetInfo reports none (default 16). */
  blockSize?: number;
  /** Weight of the prefill term against the decode-load term (default 1.0). */
  kvOverlapScoreWeight?: number;
  /** 0 picks the cheapest worker; above 0, a softmax over normalised costs (default 0). */
  routerTemperature?: number;
  /** Route by workers' KV events (default true); false predicts caches from routing. */
  useKvEvents?: boolean;
  /**
   * Where KV events come from: each worker's KvEvents stream, subscribed in workerAdded
   * (default), or `external`: the owner feeds `indexer.applyEvents` itself (NATS subjects, or
   * engines in the same process).
   */
  kvEventSource?: "worker_stream" | "external";
  /** A worker whose KV usage fraction (0..1) is over this is busy (default: no limit). */
  busyThreshold?: number;
  /** A worker with more waiting requests than this is busy (default: no limit). */
  maxWaitingRequests?: number;
  /** Without KV events: how long a routed prompt's blocks are assumed cached (default 120 s). */
  predictionTtlMs?: number;
  /** How often to poll each worker's GetInfo for load; 0 uses only WorkerHandle.info (default 1000). */
  loadPollIntervalMs?: number;
  /** Seconds a client is told to wait when every worker is busy (default 1). */
  retryAfterSeconds?: number;
  registry?: Registry;
  log?: Logger;
  /** Clock for prediction expiry (default Date.now). */
  now?: () => number;
  /** Uniform [0, 1) source for tie-breaking and the softmax (default Math.random). */
  random?: () => number;
}

interface WorkerFeed {
  abort: AbortController;
  loops: Promise<void>[];
  load?: LoadMetrics;
}

/** One candidate as scored, for logs and tests. */
export interface ScoredWorker {
  worker: WorkerHandle;
  overlapBlocks: number;
  requestBlocks: number;
  /** KV blocks of the requests this router sent the worker and has not seen finish. */
  activeBlocks: number;
  cost: number;
  busy: boolean;
  /** The prompt's full-block hashes at this worker's block size. */
  blockHashes: readonly bigint[];
}

export class KvSelector implements WorkerSelector {
  readonly indexer = new KvIndexer();
  readonly active = new ActiveSequences();
  readonly metrics: KvRouterMetrics;
  private readonly predictor?: ApproxKvPredictor;
  private readonly feeds = new Map<string, WorkerFeed>();
  private readonly blockSize: number;
  private readonly kvOverlapScoreWeight: number;
  private readonly routerTemperature: number;
  private readonly useKvEvents: boolean;
  private readonly loadPollIntervalMs: number;
  private readonly random: () => number;

  constructor(private readonly options: KvSelectorOptions = {}) {
    this.blockSize = options.blockSize ?? 16;
    this.kvOverlapScoreWeight = options.kvOverlapScoreWeight ?? 1.0;
    this.routerTemperature = options.routerTemperature ?? 0;
    this.useKvEvents = options.useKvEvents ?? true;
    this.loadPollIntervalMs = options.loadPollIntervalMs ?? 1000;
    this.random = options.random ?? Math.random;
    checkOptions({ ...options, blockSize: this.blockSize, kvOverlapScoreWeight: this.kvOverlapScoreWeight, routerTemperature: this.routerTemperature, loadPollIntervalMs: this.loadPollIntervalMs });
    if (!this.useKvEvents) this.predictor = new ApproxKvPredictor(this.indexer, options.predictionTtlMs ?? 120_000, options.now);
    this.metrics = createKvRouterMetrics(options.registry ?? new Registry(), () => {
      const blocks = new Map<string, number>();
      for (const workerId of this.indexer.workerIds()) blocks.set(workerId, this.indexer.blockCount(workerId));
      return blocks;
    });
  }

  select(request: SelectionRequest, candidates: readonly WorkerHandle[]): Selection {
    const scored = this.score(request.tokenIds, candidates);
    const free = scored.filter((s) => !s.busy);
    if (free.length === 0) {
      this.metrics.decisions.inc({ reason: "all_busy" });
      throw new RouterError(
        "all_busy",
        `all ${candidates.length} worker(s) are busy (${this.busyRule()}); try again later`,
        this.options.retryAfterSeconds ?? 1,
      );
    }
    const chosen = free[chooseByCost(free.map((s) => s.cost), this.routerTemperature, this.random)];
    const { worker, overlapBlocks } = chosen;
    this.active.add(request.requestId, worker.id, chosen.blockHashes, chosen.requestBlocks);
    this.predictor?.recordRouted(worker.id, chosen.blockHashes);
    const reason = overlapBlocks > 0 ? "kv_overlap" : "load";
    this.metrics.decisions.inc({ reason });
    this.metrics.overlapBlocks.observe({ worker: worker.id }, overlapBlocks);
    return { worker, reason, overlapBlocks };
  }

  /** Every candidate's overlap, load and cost for this prompt, without routing it. */
  score(tokenIds: readonly number[], candidates: readonly WorkerHandle[]): ScoredWorker[] {
    if (candidates.length === 0) throw new RouterError("no_workers", "no live worker to route to", 1);
    this.predictor?.expire();
    // Workers of one model share a block size in practice; hash and match once per size.
    const matchesBySize = new Map<number, { hashes: bigint[]; matches: Map<string, number> }>();
    return candidates.map((worker) => {
      const blockSize = this.blockSizeOf(worker);
      let bySize = matchesBySize.get(blockSize);
      if (!bySize) {
        const hashes = blockHashes(tokenIds, blockSize);
        bySize = { hashes, matches: this.indexer.findMatches(hashes) };
        matchesBySize.set(blockSize, bySize);
      }
      const activeOverlapBlocks = this.active.overlap(worker.id, bySize.hashes);
      const inputs = {
        requestBlocks: Math.ceil(tokenIds.length / blockSize),
        overlapBlocks: Math.max(bySize.matches.get(worker.id) ?? 0, activeOverlapBlocks),
        activeBlocks: this.active.activeBlocks(worker.id),
        activeOverlapBlocks,
        kvOverlapScoreWeight: this.kvOverlapScoreWeight,
      };
      return {
        worker,
        overlapBlocks: inputs.overlapBlocks,
        requestBlocks: inputs.requestBlocks,
        activeBlocks: inputs.activeBlocks,
        cost: workerCost(inputs),
        busy: this.isBusy(worker, inputs.activeBlocks),
        blockHashes: bySize.hashes,
      };
    });
  }

  workerAdded(worker: WorkerHandle): void {
    this.stopFeed(worker.id);
    const reported = worker.info.blockSize;
    if (this.options.blockSize !== undefined && reported > 0 && reported !== this.options.blockSize) {
      this.options.log?.warn(`worker ${worker.id} reports block size ${reported}, not the configured ${this.options.blockSize}; routing to it with ${reported}`);
    }
    const feed: WorkerFeed = { abort: new AbortController(), loops: [] };
    const { signal } = feed.abort;
    this.feeds.set(worker.id, feed);
    if (this.useKvEvents && this.options.kvEventSource !== "external") {
      feed.loops.push(
        followKvEvents({
          workerId: worker.id,
          client: worker.client,
          sink: this.indexer,
          signal,
          log: this.options.log,
          onBatch: (batch, outcome) => {
            if (outcome !== "applied") return;
            this.metrics.kvEvents.inc({ worker: worker.id }, batch.events.length);
            this.metrics.eventLagSeconds.observe(Math.max(0, Date.now() - Number(batch.timestampMs)) / 1000);
          },
          onResync: (cause) => this.metrics.resyncs.inc({ worker: worker.id, cause }),
        }),
      );
    }
    if (this.loadPollIntervalMs > 0) {
      feed.loops.push(pollLoad(worker.client, this.loadPollIntervalMs, signal, (load) => (feed.load = load)));
    }
  }

  workerRemoved(workerId: string): void {
    this.stopFeed(workerId);
    this.indexer.removeWorker(workerId);
    this.predictor?.removeWorker(workerId);
    this.active.removeWorker(workerId);
    this.metrics.forgetWorker(workerId);
  }

  requestFinished(requestId: string, worker: WorkerHandle): void {
    this.active.finish(requestId, worker.id);
  }

  async close(): Promise<void> {
    const loops = [...this.feeds.values()].flatMap((feed) => {
      feed.abort.abort();
      return feed.loops;
    });
    this.feeds.clear();
    await Promise.all(loops);
  }

  private stopFeed(workerId: string): void {
    const feed = this.feeds.get(workerId);
    if (!feed) return;
    feed.abort.abort();
    this.feeds.delete(workerId);
  }

  private blockSizeOf(worker: WorkerHandle): number {
    return worker.info.blockSize > 0 ? worker.info.blockSize : this.blockSize;
  }

  /** Load as last polled, or as discovery last saw it. */
  private loadOf(worker: WorkerHandle): LoadMetrics | undefined {
    return this.feeds.get(worker.id)?.load ?? worker.info.load;
  }

  /** `routedBlocks`: what the router's own bookkeeping says the worker's running requests hold. */
  private isBusy(worker: WorkerHandle, routedBlocks: number): boolean {
    const { busyThreshold, maxWaitingRequests } = this.options;
    if (busyThreshold === undefined && maxWaitingRequests === undefined) return false;
    const load = this.loadOf(worker);
    if (!load) return false;
    if (busyThreshold !== undefined && load.kvBlocksTotal > 0) {
      // The engine's count lags by a poll interval; the router's own count of what it routed
      // there covers requests sent since.
      const usage = Math.max(load.kvBlocksUsed, routedBlocks) / load.kvBlocksTotal;
      if (usage > busyThreshold) return true;
    }
    return maxWaitingRequests !== undefined && load.waitingRequests > maxWaitingRequests;
  }

  private busyRule(): string {
    const rules: string[] = [];
    if (this.options.busyThreshold !== undefined) rules.push(`KV usage over ${this.options.busyThreshold}`);
    if (this.options.maxWaitingRequests !== undefined) rules.push(`more than ${this.options.maxWaitingRequests} waiting`);
    return rules.join(" or ");
  }
}

/** Fails early on options no router could work with. */
function checkOptions(options: KvSelectorOptions & Required<Pick<KvSelectorOptions, "blockSize" | "kvOverlapScoreWeight" | "routerTemperature" | "loadPollIntervalMs">>): void {
  const fail = (what: string) => {
    throw new Error(`KvSelector: ${what}`);
  };
  const { blockSize, kvOverlapScoreWeight, routerTemperature, loadPollIntervalMs, busyThreshold, maxWaitingRequests, predictionTtlMs } = options;
  if (!Number.isInteger(blockSize) || blockSize < 1) fail(`blockSize must be a positive integer, got ${blockSize}`);
  if (!(kvOverlapScoreWeight >= 0)) fail(`kvOverlapScoreWeight must be >= 0, got ${kvOverlapScoreWeight}`);
  if (!(routerTemperature >= 0)) fail(`routerTemperature must be >= 0, got ${routerTemperature}`);
  if (!(loadPollIntervalMs >= 0)) fail(`loadPollIntervalMs must be >= 0, got ${loadPollIntervalMs}`);
  if (predictionTtlMs !== undefined && !(predictionTtlMs > 0)) fail(`predictionTtlMs must be positive, got ${predictionTtlMs}`);
  if (busyThreshold !== undefined && !(busyThreshold > 0 && busyThreshold <= 1)) fail(`busyThreshold must be in (0, 1], got ${busyThreshold}`);
  if (maxWaitingRequests !== undefined && !(Number.isInteger(maxWaitingRequests) && maxWaitingRequests >= 0)) {
    fail(`maxWaitingRequests must be a non-negative integer, got ${maxWaitingRequests}`);
  }
}
