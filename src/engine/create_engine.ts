/**
 * Builds the engine a worker runs from its configuration: the mocker (simulated, TypeScript)
 * or the native engine (C++ addon).
 */
import { readModelFolder } from "../model/model_folder.ts";
import type { Engine } from "./engine.ts";
import { MockerEngine } from "./mocker/mocker_engine.ts";
import { NativeEngine, type NativeDtype } from "./native/native_engine.ts";

export type EngineKind = "mocker" | "native";

export interface EngineConfig {
  engine: EngineKind;
  model: string;
  blockSize: number;
  maxNumSeqs: number;
  /** Tokens per step. Default 2048; the native engine on a CUDA GPU of 70 GiB or more (not an A100): 8192, as vLLM. */
  maxNumBatchedTokens?: number;
  maxModelLen?: number;
  enablePrefixCaching: boolean;
  /** Mocker: KV blocks in its simulated pool. */
  numGpuBlocks: number;
  /** Mocker: divides every simulated duration; 0 costs nothing at all. */
  speedupRatio: number;
  /** Mocker: bytes of fake KV per block, what disaggregated serving moves (default 256). */
  kvBytesPerBlock?: number;
  /** Native: bytes for the KV cache (default: 256 MiB on CPU; on CUDA, from gpuMemoryUtilization). */
  kvCacheMemoryBytes?: number;
  /** Native: threads for the matmuls (default: one per core). */
  threads?: number;
  /** Native: cpu or cuda (default: cuda when built with CUDA and a GPU is present). */
  device?: "cpu" | "cuda";
  /** Native on CUDA: fraction of GPU memory for weights, activations and the KV cache. */
  gpuMemoryUtilization?: number;
  /** Native on CUDA: no CUDA graphs. */
  enforceEager?: boolean;
  /** Native on CUDA: the type of weights, KV cache and GEMM inputs (NativeEngineOptions.dtype). */
  dtype?: NativeDtype;
}

export async function createEngine(config: EngineConfig): Promise<Engine> {
  const folder = readModelFolder(config.model);
  const maxModelLen = config.maxModelLen ?? folder.maxPositionEmbeddings;
  switch (config.engine) {
    case "mocker":
      return new MockerEngine({
        blockSize: config.blockSize,
        numGpuBlocks: config.numGpuBlocks,
        maxNumSeqs: config.maxNumSeqs,
        maxNumBatchedTokens: config.maxNumBatchedTokens ?? 2048,
        maxModelLen,
        enablePrefixCaching: config.enablePrefixCaching,
        speedupRatio: config.speedupRatio,
        kvBytesPerBlock: config.kvBytesPerBlock,
        vocabSize: regularVocabSize(folder.vocabSize),
        // A served mocker stands in for an engine on hardware of its own: it does not slow down
        // to the pace of the event loop its frontend and worker share.
        ownClock: true,
      });
    case "native":
      return NativeEngine.load(
        // Unset options keep the engine's own defaults, which depend on the device.
        withoutUndefined({
          model: config.model,
          blockSize: config.blockSize,
          kvCacheMemoryBytes: config.kvCacheMemoryBytes,
          maxNumSeqs: config.maxNumSeqs,
          maxNumBatchedTokens: config.maxNumBatchedTokens,
          maxModelLen,
          enablePrefixCaching: config.enablePrefixCaching,
          threads: config.threads,
          device: config.device,
          gpuMemoryUtilization: config.gpuMemoryUtilization,
          enforceEager: config.enforceEager,
          dtype: config.dtype,
        }),
      );
  }
}

/**
 * Ids the mocker may emit: Qwen-family configs pad vocab_size past the tokenizer's regular
 * tokens (151643 of 151936) with special and unused ids, which would detokenize to nothing.
 */
function regularVocabSize(configVocab: number): number {
  return configVocab === 151936 ? 151643 : configVocab;
}

function withoutUndefined<T extends object>(options: T): T {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as T;
}
