/**
 * `switchyard worker` processes for disaggregated serving, driven as a router drives them: the
 * prompt on a prefill worker (do_remote_decode, one token), then on a decode worker
 * (do_remote_prefill with the prefill's kv_transfer). Each worker serves Prometheus metrics on
 * its own port, which tests and bench/disagg_cuda.ts read to see what the transfer did.
 */
import { create } from "@bufbuild/protobuf";
import { GenerateRequestSchema, type GenerateResponse, type KvTransferParams } from "../../gen/switchyard/worker/v1/worker_pb.ts";
import { createWorkerClient, type WorkerClient } from "../../src/router/worker_handle.ts";
import { freePort, startSwitchyard, stop, type Proc } from "./processes.ts";

export interface DisaggWorker {
  proc: Proc;
  client: WorkerClient;
  metricsUrl: string;
  close(): Promise<void>;
}

/** Starts `switchyard worker` on free ports with `args` (engine flags, mode, id). */
export async function startDisaggWorker(args: string[], env: Record<string, string> = {}): Promise<DisaggWorker> {
  const metricsPort = await freePort();
  const proc = await startSwitchyard(["worker", "--port", "0", "--metrics-port", String(metricsPort), ...args], env);
  return {
    proc,
    client: createWorkerClient(proc.url),
    metricsUrl: `http://127.0.0.1:${metricsPort}/metrics`,
    close: async () => {
      await stop(proc);
    },
  };
}

/** The sum of a metric's samples whose labels include `labels`; 0 when there are none. */
export async function scrapeMetric(metricsUrl: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const text = await (await fetch(metricsUrl)).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    const match = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$/);
    if (!match || match[1] !== name) continue;
    const found = Object.fromEntries([...(match[2] ?? "").matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => found[k] === v)) sum += Number(match[3]);
  }
  return sum;
}

export interface GreedyRun {
  tokenIds: number[];
  /** The chosen token's logprob, per token. */
  logprobs: number[];
  /** The top alternatives' logprobs per token, best first (as many as asked for). */
  top: number[][];
}

const greedy = (maxTokens: number, topLogprobs: number) => ({ temperature: 0, maxTokens, ignoreEos: true, logprobs: topLogprobs });

async function collect(stream: AsyncIterable<GenerateResponse>): Promise<GenerateResponse[]> {
  const out: GenerateResponse[] = [];
  for await (const r of stream) out.push(r);
  return out;
}

function errorOf(responses: GenerateResponse[]): string | undefined {
  return responses.find((r) => r.errorMessage !== "")?.errorMessage;
}

/** The router's first call: the prompt, one greedy token, its KV kept for a decode worker. */
export async function prefillOn(worker: DisaggWorker, requestId: string, tokenIds: number[], topLogprobs = 0): Promise<{ first: GreedyRun; kvTransfer: KvTransferParams }> {
  const responses = await collect(
    worker.client.generate(create(GenerateRequestSchema, { requestId, tokenIds, sampling: greedy(1, topLogprobs), disaggregation: { doRemoteDecode: true } })),
  );
  const error = errorOf(responses);
  if (error) throw new Error(`prefill of ${requestId} failed: ${error}`);
  const kvTransfer = responses.at(-1)?.kvTransfer;
  if (!kvTransfer) throw new Error(`prefill of ${requestId} answered without kv_transfer`);
  return { first: runOf(responses), kvTransfer };
}

/** The router's second call: the rest of a greedy run of `maxTokens`, on the decode worker. */
export async function decodeOn(
  worker: DisaggWorker,
  requestId: string,
  tokenIds: number[],
  maxTokens: number,
  kvTransfer: KvTransferParams,
  firstTokenId: number,
  topLogprobs = 0,
): Promise<GreedyRun> {
  const responses = await collect(
    worker.client.generate(
      create(GenerateRequestSchema, {
        requestId,
        tokenIds,
        sampling: greedy(maxTokens, topLogprobs),
        disaggregation: { doRemotePrefill: true, kvTransfer, firstTokenId },
      }),
    ),
  );
  const error = errorOf(responses);
  if (error) throw new Error(`decode of ${requestId} failed: ${error}`);
  return runOf(responses);
}

/** Prefill on one worker, decode on another: the whole greedy run, first token included. */
export async function disaggregatedRun(
  prefill: DisaggWorker,
  decode: DisaggWorker,
  requestId: string,
  tokenIds: number[],
  maxTokens: number,
  topLogprobs = 0,
): Promise<GreedyRun & { kvTransfer: KvTransferParams }> {
  const { first, kvTransfer } = await prefillOn(prefill, requestId, tokenIds, topLogprobs);
  const rest = await decodeOn(decode, requestId, tokenIds, maxTokens, kvTransfer, first.tokenIds[0], topLogprobs);
  return {
    tokenIds: [...first.tokenIds, ...rest.tokenIds],
    logprobs: [...first.logprobs, ...rest.logprobs],
    top: [...first.top, ...rest.top],
    kvTransfer,
  };
}

function runOf(responses: GenerateResponse[]): GreedyRun {
  return {
    tokenIds: responses.flatMap((r) => r.tokenIds),
    logprobs: responses.flatMap((r) => r.logprobs.map((l) => l.logprob)),
    top: responses.flatMap((r) => r.logprobs.map((l) => l.topLogprobs.map((t) => t.logprob))),
  };
}
