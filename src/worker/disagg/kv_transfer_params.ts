/**
 * KvTransferParams, the wire form of held KV blocks: built by the prefill worker from what its
 * engine holds, checked by the decode worker against its own engine before it reserves
 * anything. Two workers can exchange blocks only when their layouts agree segment by segment
 * (same model and settings) and their blocks cover the same tokens.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { KvTransferParamsSchema, type KvTransferParams } from "../../../gen/switchyard/worker/v1/worker_pb.ts";
import { blockHashes } from "../../engine/block_hash.ts";
import type { HeldKv, KvMemoryLayout } from "../../engine/engine.ts";
import type { KvTransferEndpoint } from "./transfer_endpoint.ts";

export function heldKvTransferParams(
  endpoint: KvTransferEndpoint,
  engineId: string,
  requestId: string,
  promptTokenIds: readonly number[],
  blockSize: number,
  held: HeldKv,
): KvTransferParams {
  const { region, layout } = endpoint;
  return create(KvTransferParamsSchema, {
    engineId,
    agentAddress: endpoint.address,
    agentMetadata: endpoint.metadata,
    blockIds: held.blockIds,
    // Hashing a prompt is microseconds next to its prefill; routers can index the blocks with them.
    blockHashes: blockHashes(promptTokenIds.slice(0, held.numTokens), blockSize),
    requestId,
    numTokens: held.numTokens,
    memoryAddress: region.address,
    memoryRegionId: BigInt(region.id),
    segments: layout.segments.map((s) => ({ offset: BigInt(s.offset), blockStride: BigInt(s.blockStride), blockBytes: s.blockBytes })),
    memoryKind: region.kind,
    deviceId: region.deviceId,
    kvDtype: layout.dtype ?? "",
  });
}

/**
 * The kv_transfer of a do_remote_prefill request, checked against this engine's layout and
 * the request's prompt; InvalidArgument names the first thing that does not fit.
 */
export function checkKvTransferParams(
  params: KvTransferParams | undefined,
  layout: KvMemoryLayout,
  promptLength: number,
  blockSize: number,
): KvTransferParams {
  const invalid = (message: string) => new ConnectError(`disaggregation.kv_transfer: ${message}`, Code.InvalidArgument);
  if (!params) throw new ConnectError("do_remote_prefill needs disaggregation.kv_transfer from the prefill worker's answer", Code.InvalidArgument);
  if (params.engineId === "") throw invalid("engine_id is empty");
  if (params.agentMetadata.length === 0) throw invalid("agent_metadata is empty");
  if (params.requestId === "") throw invalid("request_id is empty");
  if (params.memoryKind !== "host" && params.memoryKind !== "cuda") throw invalid(`memory_kind must be host or cuda, got '${params.memoryKind}'`);
  const ours = layout.segments;
  if (params.segments.length !== ours.length) {
    throw invalid(`the prefill worker's KV has ${params.segments.length} segments, this worker's ${ours.length}: the two engines do not run the same model and settings`);
  }
  if (params.kvDtype !== "" && layout.dtype !== undefined && params.kvDtype !== layout.dtype) {
    throw invalid(`the prefill worker caches K and V in ${params.kvDtype}, this worker in ${layout.dtype}: the two engines do not run the same model and settings (--dtype)`);
  }
  params.segments.forEach((s, i) => {
    if (s.blockBytes !== ours[i].blockBytes) {
      throw invalid(`segment ${i} has blocks of ${s.blockBytes} bytes on the prefill worker, ${ours[i].blockBytes} here: the two engines do not run the same model and settings`);
    }
  });
  if (params.numTokens !== promptLength) {
    throw invalid(`num_tokens is ${params.numTokens}, but the prompt has ${promptLength} tokens: the blocks hold another prompt's KV`);
  }
  const expectedBlocks = Math.ceil(promptLength / blockSize);
  if (params.blockIds.length !== expectedBlocks) {
    throw invalid(`${params.blockIds.length} block_ids for a prompt of ${promptLength} tokens in blocks of ${blockSize}; expected ${expectedBlocks}`);
  }
  return params;
}
