/** The `switchyard` command: dispatches to one file per subcommand. */
import { describeError } from "../runtime/logger.ts";
import { UsageError } from "./args.ts";
import { BENCH_USAGE, benchCommand } from "./bench.ts";
import { FRONTEND_USAGE, frontendCommand } from "./frontend.ts";
import { ROUTER_COMMAND_USAGE, routerCommand } from "./router.ts";
import { SERVE_USAGE, serveCommand } from "./serve.ts";
import { WORKER_USAGE, workerCommand } from "./worker.ts";

const ENGINE_USAGE = `engine options (vLLM's names):
  --engine native|mocker        default native (the C++ engine); mocker simulates one
  --model DIR                   Hugging Face model folder (default: tiny random Qwen3, generated once)
  --served-model-name NAME      name clients use (default: --model as given)
  --block-size N                tokens per KV block (default 16)
  --max-num-seqs N              running requests at most (default 256)
  --max-num-batched-tokens N    tokens per engine step (default 2048; native on a CUDA GPU of 70 GiB
                                or more other than an A100: 8192, as vLLM)
  --max-model-len N             context length (default: from config.json)
  --[no-]enable-prefix-caching  default on
  --num-gpu-blocks N            mocker: simulated KV blocks (default 16384)
  --speedup-ratio X             mocker: run X times faster than simulated real time; 0 = no cost
  --kv-bytes-per-block N        mocker: bytes of fake KV per block that disaggregation moves (default 256)
  --kv-cache-memory BYTES       native: KV cache budget (default 256 MiB on CPU; on CUDA, what
                                --gpu-memory-utilization leaves)
  --threads N                   native: matmul threads (default: one per core)
  --device cpu|cuda             native: where to run (default: cuda when built with CUDA and a GPU is present)
  --gpu-memory-utilization F    native on CUDA: fraction of the GPU's memory this engine may hold
                                (default 0.9; workers sharing a GPU take e.g. 0.3 each)
  --enforce-eager               native on CUDA: no CUDA graphs
  --dtype auto|bfloat16|float16 native on CUDA: weights, KV cache and GEMM inputs (default auto: the
                                checkpoint's). float16 serves a bf16 model with its exact weights,
                                finer rounding and faster prefill, but saturates values past +-65504`;

const COMMANDS: Record<string, { run: (argv: string[]) => Promise<void>; usage: string }> = {
  serve: { run: serveCommand, usage: SERVE_USAGE },
  worker: { run: workerCommand, usage: WORKER_USAGE },
  frontend: { run: frontendCommand, usage: FRONTEND_USAGE },
  router: { run: routerCommand, usage: ROUTER_COMMAND_USAGE },
  bench: { run: benchCommand, usage: BENCH_USAGE },
};

function usage(): string {
  return `usage: switchyard <command> [options]\n\n${Object.values(COMMANDS).map((c) => c.usage).join("\n\n")}\n\n${ENGINE_USAGE}\n`;
}

export async function main(argv: string[]): Promise<void> {
  const [name, ...rest] = argv;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    process.stdout.write(usage());
    return;
  }
  const command = COMMANDS[name];
  if (!command) {
    process.stderr.write(`switchyard: unknown command '${name}'\n\n${usage()}`);
    process.exit(2);
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    process.stdout.write(`${command.usage}\n\n${ENGINE_USAGE}\n`);
    return;
  }
  try {
    await command.run(rest);
  } catch (err) {
    process.stderr.write(`switchyard ${name}: ${describeError(err)}\n`);
    process.exit(err instanceof UsageError ? 2 : 1);
  }
}
