/**
 * Command-line parsing shared by the subcommands: node:util's parseArgs for the syntax, zod for
 * the values, one error naming the flag and what it expects.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { z } from "zod";

export class UsageError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "UsageError";
  }
}

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Parses `argv` against `options`, then validates the values (named as in flags) with `schema`. */
export function parseCommand<S extends z.ZodType>(argv: string[], options: Options, schema: S): z.infer<S> {
  let values: Record<string, unknown>;
  try {
    ({ values } = parseArgs({ args: argv, options, strict: true, allowPositionals: false, allowNegative: true }));
  } catch (err) {
    throw new UsageError((err as Error).message, { cause: err });
  }
  const result = schema.safeParse(values);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new UsageError(`--${String(issue.path[0] ?? "")}: ${issue.message}`);
  }
  return result.data;
}

/** A flag given as a string that must be an integer within bounds. */
export const intFlag = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);
export const numberFlag = (min: number) => z.coerce.number().min(min);

export const HOST_PORT_OPTIONS: Options = {
  host: { type: "string" },
  port: { type: "string" },
};

export const ENGINE_OPTIONS: Options = {
  engine: { type: "string" },
  model: { type: "string" },
  "served-model-name": { type: "string" },
  "block-size": { type: "string" },
  "max-num-seqs": { type: "string" },
  "max-num-batched-tokens": { type: "string" },
  "max-model-len": { type: "string" },
  "enable-prefix-caching": { type: "boolean" },
  "num-gpu-blocks": { type: "string" },
  "speedup-ratio": { type: "string" },
  "kv-bytes-per-block": { type: "string" },
  "kv-cache-memory": { type: "string" },
  threads: { type: "string" },
  device: { type: "string" },
  "gpu-memory-utilization": { type: "string" },
  "enforce-eager": { type: "boolean" },
  dtype: { type: "string" },
};

export const EngineFlagsSchema = z.object({
  engine: z.enum(["mocker", "native"]).default("native"),
  model: z.string().optional(),
  "served-model-name": z.string().min(1).optional(),
  "block-size": intFlag(1, 1024).default(16),
  "max-num-seqs": intFlag(1).default(256),
  "max-num-batched-tokens": intFlag(1).optional(),
  "max-model-len": intFlag(2).optional(),
  "enable-prefix-caching": z.boolean().default(true),
  "num-gpu-blocks": intFlag(1).optional(),
  "speedup-ratio": numberFlag(0).optional(),
  "kv-bytes-per-block": intFlag(8).refine((n) => n % 8 === 0, "must be a multiple of 8 (K and V halves of whole 32-bit words)").optional(),
  "kv-cache-memory": intFlag(1).optional(),
  threads: intFlag(1, 1024).optional(),
  device: z.enum(["cpu", "cuda"]).optional(),
  "gpu-memory-utilization": z.coerce.number().gt(0).max(1).optional(),
  "enforce-eager": z.boolean().optional(),
  dtype: z.enum(["auto", "bfloat16", "float16"]).optional(),
});

export type EngineFlags = z.infer<typeof EngineFlagsSchema>;

/** Flags that only one engine reads: giving them to the other is a mistake worth saying. */
const ENGINE_ONLY_FLAGS = {
  mocker: ["num-gpu-blocks", "speedup-ratio", "kv-bytes-per-block"],
  native: ["kv-cache-memory", "threads", "device", "gpu-memory-utilization", "enforce-eager", "dtype"],
} as const;

export function checkEngineFlags(flags: EngineFlags): void {
  for (const [engine, names] of Object.entries(ENGINE_ONLY_FLAGS)) {
    if (engine === flags.engine) continue;
    for (const name of names) {
      if (flags[name] !== undefined) throw new UsageError(`--${name} applies to the ${engine} engine only; add --engine ${engine}`);
    }
  }
}
