/**
 * The router's own bookkeeping of requests it has sent and not yet seen finish, per worker:
 * the KV blocks they hold there. Requests sharing a prefix share its blocks on the worker
 * (prefix caching), so shared full blocks count once; the partial last block of each prompt
 * counts per request.
 *
 * It also answers which leading blocks of a new request are on their way into a worker's
 * cache: blocks of requests just routed there, whose BlockStored events have not arrived yet.
 */

interface ActiveRequest {
  workerId: string;
  blockHashes: readonly bigint[];
  partialBlocks: number;
}

interface WorkerLoad {
  /** Reference count per full block hash held by this worker's active requests. */
  blockRefs: Map<bigint, number>;
  partialBlocks: number;
  requests: number;
}

export class ActiveSequences {
  private readonly requests = new Map<string, ActiveRequest[]>();
  private readonly loads = new Map<string, WorkerLoad>();

  /** Records a request routed to `workerId`; `totalBlocks` includes a partial last block. */
  add(requestId: string, workerId: string, blockHashes: readonly bigint[], totalBlocks: number): void {
    const request: ActiveRequest = { workerId, blockHashes, partialBlocks: totalBlocks - blockHashes.length };
    const sameId = this.requests.get(requestId);
    if (sameId) sameId.push(request);
    else this.requests.set(requestId, [request]);
    const load = this.load(workerId);
    for (const hash of blockHashes) load.blockRefs.set(hash, (load.blockRefs.get(hash) ?? 0) + 1);
    load.partialBlocks += request.partialBlocks;
    load.requests++;
  }

  /** The request left its worker; false when it was not active (already finished, or unknown). */
  finish(requestId: string, workerId?: string): boolean {
    const sameId = this.requests.get(requestId);
    if (!sameId) return false;
    const index = workerId === undefined ? 0 : sameId.findIndex((r) => r.workerId === workerId);
    if (index < 0) return false;
    const [request] = sameId.splice(index, 1);
    if (sameId.length === 0) this.requests.delete(requestId);
    const load = this.loads.get(request.workerId);
    if (!load) return true;
    for (const hash of request.blockHashes) {
      const refs = load.blockRefs.get(hash)!;
      if (refs === 1) load.blockRefs.delete(hash);
      else load.blockRefs.set(hash, refs - 1);
    }
    load.partialBlocks -= request.partialBlocks;
    load.requests--;
    return true;
  }

  /** The worker of an active request (the first, if the id was used twice). */
  workerOf(requestId: string): string | undefined {
    return this.requests.get(requestId)?.[0]?.workerId;
  }

  /** KV blocks held by the worker's active requests. */
  activeBlocks(workerId: string): number {
    const load = this.loads.get(workerId);
    return load ? load.blockRefs.size + load.partialBlocks : 0;
  }

  activeRequests(workerId: string): number {
    return this.loads.get(workerId)?.requests ?? 0;
  }

  /** Leading blocks of `blockHashes` that active requests on the worker hold. */
  overlap(workerId: string, blockHashes: readonly bigint[]): number {
    const load = this.loads.get(workerId);
    if (!load || load.blockRefs.size === 0) return 0;
    let blocks = 0;
    while (blocks < blockHashes.length && load.blockRefs.has(blockHashes[blocks])) blocks++;
    return blocks;
  }

  /** Forgets a worker that left, with its requests. */
  removeWorker(workerId: string): void {
    this.loads.delete(workerId);
    for (const [requestId, sameId] of this.requests) {
      const kept = sameId.filter((r) => r.workerId !== workerId);
      if (kept.length === 0) this.requests.delete(requestId);
      else if (kept.length !== sameId.length) this.requests.set(requestId, kept);
    }
  }

  private load(workerId: string): WorkerLoad {
    let load = this.loads.get(workerId);
    if (!load) {
      load = { blockRefs: new Map(), partialBlocks: 0, requests: 0 };
      this.loads.set(workerId, load);
    }
    return load;
  }
}
