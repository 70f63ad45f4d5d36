/**
 * Which model a command serves: --model DIR, or the default tiny random Qwen3 generated on
 * first use. The served name defaults to what the user typed, as vLLM does.
 */
import { ensureRandomModel, TINY_QWEN3 } from "../model/random_model.ts";
import { readModelFolder, type ModelFolder } from "../model/model_folder.ts";
import type { Logger } from "../runtime/logger.ts";

export const DEFAULT_MODEL_NAME = "switchyard-tiny-qwen3";

export interface ModelSource {
  folder: ModelFolder;
  servedName: string;
  isDefault: boolean;
}

export function resolveModel(model: string | undefined, servedModelName: string | undefined, log: Logger): ModelSource {
  if (model) return { folder: readModelFolder(model), servedName: servedModelName ?? model, isDefault: false };
  const path = ensureRandomModel(TINY_QWEN3, "tiny-qwen3");
  log.info(
    `no --model given: serving the default tiny Qwen3 with RANDOM weights from ${path}. ` +
      "Its text is meaningless; serve a real model with --model /path/to/hf-model-folder.",
  );
  return { folder: readModelFolder(path), servedName: servedModelName ?? DEFAULT_MODEL_NAME, isDefault: true };
}
