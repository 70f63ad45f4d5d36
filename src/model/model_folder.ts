/**
 * Reads what the serving stack needs from a Hugging Face model folder before any engine loads
 * it: that the folder is complete, its architecture, context length and vocabulary size.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { z } from "zod";

const ConfigSchema = z.object({
  architectures: z.array(z.string()).min(1),
  vocab_size: z.number().int().positive(),
  max_position_embeddings: z.number().int().positive().optional(),
});

export interface ModelFolder {
  path: string;
  architecture: string;
  vocabSize: number;
  /** From config.json's max_position_embeddings (4096 if absent). */
  maxPositionEmbeddings: number;
}

export class ModelFolderError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "ModelFolderError";
  }
}

export function readModelFolder(path: string): ModelFolder {
  const configPath = join(path, "config.json");
  for (const file of ["config.json", "tokenizer.json"]) {
    if (!existsSync(join(path, file))) {
      throw new ModelFolderError(`model folder ${path} has no ${file}; expected a Hugging Face model folder`);
    }
  }
  let config: z.infer<typeof ConfigSchema>;
  try {
    config = ConfigSchema.parse(JSON.parse(readFileSync(configPath, "utf8")));
  } catch (err) {
    throw new ModelFolderError(`${configPath} is not a valid model config: ${(err as Error).message}`, { cause: err });
  }
  return {
    path,
    architecture: config.architectures[0],
    vocabSize: config.vocab_size,
    maxPositionEmbeddings: config.max_position_embeddings ?? 4096,
  };
}
