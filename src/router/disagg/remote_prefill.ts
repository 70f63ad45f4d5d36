/**
 * The two requests of a disaggregated generation: the prefill request a prefill worker runs
 * (the prompt, one token, keep the KV), and the decode request that hands its KV to a decode
 * worker.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  DisaggregationParamsSchema,
  FinishReason,
  GenerateRequestSchema,
  type GenerateRequest,
  type GenerateResponse,
  type KvTransferParams,
} from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import type { WorkerHandle } from "../worker_handle.ts";

export interface PrefillResult {
  /** The prefill worker, which holds the KV until a decode worker has read it. */
  worker: WorkerHandle;
  /** The prefill's only message: the first token (and its logprobs), usage, finish reason. */
  response: GenerateResponse;
  /** Where the prompt's KV waits; absent when the request already finished (e.g. EOS). */
  kvTransfer?: KvTransferParams;
}

/**
 * Codes after which the prefill is better done on the decode worker than given up: the prefill
 * worker failed, refused, or cannot disaggregate. A request the worker judged invalid is not
 * among them: it would be just as invalid locally.
 */
const FALL_BACK_TO_LOCAL = new Set([
  Code.Unavailable,
  Code.ResourceExhausted,
  Code.Unimplemented,
  Code.Internal,
  Code.Unknown,
  Code.Aborted,
  Code.DeadlineExceeded,
  Code.Canceled,
]);

export function shouldPrefillLocallyAfter(err: unknown): boolean {
  return FALL_BACK_TO_LOCAL.has(ConnectError.from(err).code);
}

export function prefillRequest(request: GenerateRequest): GenerateRequest {
  const sampling = request.sampling;
  return create(GenerateRequestSchema, {
    ...request,
    sampling: sampling && { ...sampling, maxTokens: 1, minTokens: Math.min(sampling.minTokens, 1) },
    disaggregation: create(DisaggregationParamsSchema, { doRemoteDecode: true }),
  });
}

export function decodeRequest(request: GenerateRequest, prefill: { response: GenerateResponse; kvTransfer: KvTransferParams }): GenerateRequest {
  return create(GenerateRequestSchema, {
    ...request,
    disaggregation: create(DisaggregationParamsSchema, {
      doRemotePrefill: true,
      kvTransfer: prefill.kvTransfer,
      firstTokenId: prefill.response.tokenIds[0],
    }),
  });
}

/** Runs the prefill on `worker`; throws the worker's error, or ConnectError when it answers oddly. */
export async function runRemotePrefill(worker: WorkerHandle, request: GenerateRequest, signal: AbortSignal): Promise<PrefillResult> {
  let last: GenerateResponse | undefined;
  for await (const response of worker.client.generate(prefillRequest(request), { signal })) {
    last = response;
    if (response.finishReason !== FinishReason.UNSPECIFIED) break;
  }
  if (!last || last.finishReason === FinishReason.UNSPECIFIED) {
    throw new ConnectError(`prefill worker ${worker.id} closed the stream without a result`, Code.Unavailable);
  }
  if (last.finishReason === FinishReason.ERROR) {
    throw new ConnectError(`prefill worker ${worker.id} failed: ${last.errorMessage}`, Code.Internal);
  }
  if (last.tokenIds.length !== 1) {
    throw new ConnectError(`prefill worker ${worker.id} returned ${last.tokenIds.length} tokens, not 1`, Code.Internal);
  }
  // A stop (EOS, a stop token) ends the request here; only a length stop at the one-token cap
  // leaves work for a decode worker, and then the KV must be on offer.
  if (last.finishReason !== FinishReason.LENGTH) return { worker, response: last };
  if (!last.kvTransfer || last.kvTransfer.blockIds.length === 0) {
    throw new ConnectError(`prefill worker ${worker.id} kept no KV for a remote decode`, Code.Unimplemented);
  }
  return { worker, response: last, kvTransfer: last.kvTransfer };
}
