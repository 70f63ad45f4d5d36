/**
 * KV transfer agent, CUDA IPC on one GPU (issue 7): two processes, as CUDA IPC requires. This
 * one ("prefill") fills a KV pool in its cudaMalloc'd memory and registers it; a child process
 * ("decode") registers a pool of its own, loads the prefill agent's metadata and READs blocks
 * through the agent's CUDA IPC backend, against the device-to-device copy bandwidth measured
 * in the same run (one cudaMemcpyAsync of the same bytes, in the decode process).
 *
 * The KV pool has a Qwen3-0.6B-shaped layout: 28 layers x (K, V) segments, each segment a
 * row of blocks of 16 tokens x 8 KV heads x 128 x bf16 = 32 KiB. The KV of a 4096-token prompt
 * is 256 blocks: 256 x 56 = 14 336 descriptors of 32 KiB, 448 MiB. Cases: the blocks at random
 * pool positions on both sides (nothing merges), at consecutive positions on both sides (the
 * backend merges each segment's 256 blocks into one run), and the earlier hand check's
 * 256 x 1 MiB. Each READ is checked word by word on the GPU (the pool holds words that name
 * their offset); each method of the backend (SWITCHYARD_CUDA_IPC_COPY) runs in its own agent.
 *
 *   npx tsx bench/transfer_cuda.ts [--append] [--repeats N] [--out FILE]
 *   (GPU host with nvcc at build time: the addon's cudaTools; --append adds the table to bench/RESULTS.md)
 */
import { execFileSync, fork } from "node:child_process";
import { appendFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { cpus } from "node:os";
import { fileURLToPath } from "node:url";
import { TransferAgent, type BlockDescriptor, type BlockList } from "../src/transfer/transfer_agent.ts";
import { seededRandom } from "../src/util/seeded_random.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const LAYERS = 28;
const SEGMENTS = LAYERS * 2; // K and V of each layer
const BLOCK_BYTES = 16 * 8 * 128 * 2; // 16 tokens x 8 KV heads x head_dim 128 x bf16 = 32 KiB
const POOL_BLOCKS = 1024; // per segment: 1.75 GiB per process
const SEGMENT_BYTES = POOL_BLOCKS * BLOCK_BYTES;
const POOL_BYTES = SEGMENTS * SEGMENT_BYTES;
const PROMPT_BLOCKS = 4096 / 16;
const SEED = 0x5157;
const METHODS = ["kernel", "batch", "memcpy"] as const;
/** How the READ's blocks are given: a descriptor object per block, or one block list per side. */
const FORMS = ["objects", "block list"] as const;
/** The gather kernel's grid (blocks per SM; 0: a block per piece) and stores, tried on local memory (the backend: 4, streaming). */
const KERNEL_VARIANTS: [number, boolean][] = [
  [4, false],
  [0, false],
  [4, true],
  [0, true],
];
const variantName = ([blocksPerSm, streaming]: [number, boolean]) =>
  `${blocksPerSm ? `${blocksPerSm} blocks/SM` : "a block per piece"}${streaming ? ", streaming stores" : ""}`;

const arg = (name: string) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const REPEATS = Number(arg("--repeats") ?? 20);

interface CudaTools {
  alloc(bytes: number, deviceId?: number): bigint;
  free(address: bigint): void;
  fillPattern(address: bigint, bytes: number, seed: number): void;
  /** Triples (destination address, source byte offset in the filled memory, bytes). */
  countMismatches(pieces: BigUint64Array, seed: number): number;
  memcpyMs(dst: bigint, src: bigint, bytes: number, iterations: number): number[];
  /** Triples (source address, destination address, bytes); blocksPerSm 0: one block per piece (default 4). */
  gatherMs(runs: BigUint64Array, iterations: number, blocksPerSm?: number, streamingStores?: boolean): number[];
}

function cudaTools(): CudaTools {
  const path = fileURLToPath(new URL("../native/build/Release/switchyard_transfer.node", import.meta.url));
  const addon = createRequire(import.meta.url)(path) as { cudaTools?: CudaTools };
  if (!addon.cudaTools) throw new Error(`${path} has no cudaTools: build it where nvcc is found (a CUDA host)`);
  return addon.cudaTools;
}

interface Case {
  name: string;
  /** Pairs (remote byte offset, local byte offset, bytes) within the two pools. */
  pairs: [number, number, number][];
}

function distinctBlocks(count: number, random: () => number): number[] {
  const all = Array.from({ length: POOL_BLOCKS }, (_, i) => i);
  for (let i = POOL_BLOCKS - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return all.slice(0, count);
}

function kvCase(name: string, remoteBlocks: number[], localBlocks: number[]): Case {
  const pairs: [number, number, number][] = [];
  for (let s = 0; s < SEGMENTS; s++) {
    for (let j = 0; j < remoteBlocks.length; j++) {
      pairs.push([s * SEGMENT_BYTES + remoteBlocks[j]! * BLOCK_BYTES, s * SEGMENT_BYTES + localBlocks[j]! * BLOCK_BYTES, BLOCK_BYTES]);
    }
  }
  return { name, pairs };
}

function cases(): Case[] {
  const random = seededRandom(SEED);
  const consecutive = (from: number) => Array.from({ length: PROMPT_BLOCKS }, (_, i) => from + i);
  const mib: [number, number, number][] = [];
  for (let i = 0; i < 256; i++) mib.push([i * MiB, (255 - i) * MiB, MiB]);
  return [
    kvCase("4k-token prompt, blocks at random pool positions", distinctBlocks(PROMPT_BLOCKS, random), distinctBlocks(PROMPT_BLOCKS, random)),
    kvCase("4k-token prompt, consecutive blocks", consecutive(100), consecutive(500)),
    { name: "256 × 1 MiB (the earlier hand check)", pairs: mib },
  ];
}

function descriptors(c: Case, form: (typeof FORMS)[number], remoteRegion: number, localRegion: number): [BlockDescriptor[] | BlockList, BlockDescriptor[] | BlockList] {
  if (form === "objects") {
    return [
      c.pairs.map(([from, , n]) => ({ region: remoteRegion, offset: from, length: n })),
      c.pairs.map(([, to, n]) => ({ region: localRegion, offset: to, length: n })),
    ];
  }
  const length = c.pairs[0]![2];
  if (c.pairs.some((p) => p[2] !== length)) throw new Error(`${c.name}: a block list needs blocks of one length`);
  return [
    { region: remoteRegion, offsets: Float64Array.from(c.pairs, (p) => p[0]), length },
    { region: localRegion, offsets: Float64Array.from(c.pairs, (p) => p[1]), length },
  ];
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

interface Row {
  caseName: string;
  method: string;
  form: string;
  descriptors: number;
  bytes: number;
  postMs: number;
  readMs: number;
  gpuUs?: number;
  issueUs?: number;
  runs?: number;
  copies?: number;
  mismatches: number;
}

interface Report {
  rows: Row[];
  memcpyMs: number;
  memcpyBytes: number;
  localGatherMs: Record<string, number>;
}

// ---- decode side (the child process) ----

async function decodeSide(metadata: Buffer): Promise<Report> {
  const tools = cudaTools();
  const pool = tools.alloc(POOL_BYTES);
  const rows: Row[] = [];
  const localGatherMs: Record<string, number> = {};
  try {
    // The ceiling: one plain device-to-device copy of the KV read's size inside this pool.
    const kvBytes = PROMPT_BLOCKS * SEGMENTS * BLOCK_BYTES;
    const memcpyMs = median(tools.memcpyMs(pool + BigInt(POOL_BYTES - kvBytes), pool, kvBytes, REPEATS));
    progress(`cudaMemcpyAsync of ${kvBytes} bytes: ${memcpyMs.toFixed(3)} ms`);
    for (const c of cases()) {
      // The same kernel on local memory, no IPC and no agent: what the GPU part can reach.
      // (Source and destination in one pool: pieces may overlap, which only matters to the bytes.)
      const local = new BigUint64Array(c.pairs.length * 3);
      c.pairs.forEach(([from, to, n], i) => local.set([pool + BigInt(from), pool + BigInt(to), BigInt(n)], 3 * i));
      localGatherMs[c.name] = median(tools.gatherMs(local, REPEATS, 4, true)); // what the backend launches
      for (const v of KERNEL_VARIANTS) localGatherMs[`${c.name}|${variantName(v)}`] = median(tools.gatherMs(local, REPEATS, v[0], v[1]));
      progress(
        `gather kernel on local memory, ${c.name}: ${localGatherMs[c.name]!.toFixed(3)} ms; ` +
          KERNEL_VARIANTS.map((v) => `${variantName(v)}: ${localGatherMs[`${c.name}|${variantName(v)}`]!.toFixed(3)}`).join(", "),
      );
    }
    for (const method of METHODS) {
      process.env.SWITCHYARD_CUDA_IPC_COPY = method; // read when the agent's backend starts
      process.env.SWITCHYARD_CUDA_IPC_TRACE = "1";
      const agent = TransferAgent.create({ name: `decode-${method}` });
      try {
        if (!agent.backends.includes("cuda_ipc")) throw new Error(`the agent has no CUDA IPC backend (backends: ${agent.backends.join(", ")})`);
        const region = agent.registerAddress(pool, POOL_BYTES, { kind: "cuda" });
        const peer = agent.loadRemoteMetadata(metadata);
        const remoteRegion = 1; // the prefill agent's one region
        for (const c of cases()) {
          for (const form of method === "kernel" ? FORMS : (["block list"] as const)) {
            const [remote, locals] = descriptors(c, form, remoteRegion, region.id);
            const bytes = c.pairs.reduce((s, p) => s + p[2], 0);
            await agent.read(peer, remote, locals); // warm-up: maps the peer's memory, sizes buffers
            const post: number[] = [];
            const read: number[] = [];
            for (let r = 0; r < REPEATS; r++) {
              const t0 = performance.now();
              const transfer = agent.postRead(peer, remote, locals);
              post.push(performance.now() - t0);
              await transfer.done;
              read.push(performance.now() - t0);
            }
            // Poison, then one more read (with its notification) that must rewrite every word.
            tools.fillPattern(pool, POOL_BYTES, SEED ^ 0xdead);
            await agent.read(peer, remote, locals, { notification: `${method}: ${c.name}` });
            const check = new BigUint64Array(c.pairs.length * 3);
            c.pairs.forEach(([from, to, n], i) => check.set([pool + BigInt(to), BigInt(from), BigInt(n)], 3 * i));
            const mismatches = tools.countMismatches(check, SEED);
            rows.push({ caseName: c.name, method, form, descriptors: c.pairs.length, bytes, postMs: median(post), readMs: median(read), mismatches });
            progress(`${method}, ${form}, ${c.name}: post ${median(post).toFixed(2)} ms, READ ${median(read).toFixed(3)} ms, ${mismatches} words wrong`);
          }
        }
      } finally {
        await agent.close();
      }
    }
    return { rows, memcpyMs, memcpyBytes: kvBytes, localGatherMs };
  } finally {
    freeQuietly(tools, pool);
  }
}

const progress = (line: string) => process.stderr.write(`bench: ${line}\n`);

/** Frees without replacing an error already in flight (a sticky CUDA error fails every later call). */
function freeQuietly(tools: CudaTools, address: bigint): void {
  try {
    tools.free(address);
  } catch (err) {
    progress(`cudaFree failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}

if (process.argv.includes("--decode-child")) {
  process.once("message", (blob: string) => {
    decodeSide(Buffer.from(blob, "base64")).then(
      (report) => process.send!({ report }),
      (err: unknown) => process.send!({ error: err instanceof Error ? err.stack ?? err.message : String(err) }),
    );
  });
} else {
  await prefillSide();
}

// ---- prefill side (this process) ----

async function prefillSide(): Promise<void> {
  const tools = cudaTools();
  const pool = tools.alloc(POOL_BYTES);
  const agent = TransferAgent.create({ name: "prefill" });
  let child: ReturnType<typeof fork> | undefined;
  try {
    tools.fillPattern(pool, POOL_BYTES, SEED);
    const region = agent.registerAddress(pool, POOL_BYTES, { kind: "cuda" });
    if (region.id !== 1) throw new Error(`expected region 1, got ${region.id}`);
    child = fork(fileURLToPath(import.meta.url), ["--decode-child", ...process.argv.slice(2)], {
      execArgv: ["--import", "tsx"],
      stdio: ["inherit", "inherit", "pipe", "ipc"],
    });
    // The backend's trace lines, one per READ in order: the warm-up, REPEATS timed, the checked one.
    const traces: string[] = [];
    let partial = "";
    child.stderr!.on("data", (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split("\n");
      partial = lines.pop()!;
      for (const line of lines) {
        if (line.startsWith("cuda_ipc trace:")) traces.push(line);
        else process.stderr.write(line + "\n");
      }
    });
    const finished = new Promise<Report>((resolve, reject) => {
      child!.once("message", (m: { report?: Report; error?: string }) => (m.report ? resolve(m.report) : reject(new Error(m.error))));
      child!.once("exit", (code) => reject(new Error(`the decode process exited (${code}) before reporting`)));
    });
    child.send(agent.metadata().toString("base64"));
    const report = await finished;
    attachTraces(report.rows, traces);
    const notes = agent.notifications().length;
    print(report, notes);
  } finally {
    child?.kill();
    await agent.close();
    freeQuietly(tools, pool);
  }
}

/** cuda_ipc trace: read N: D descriptors, R runs, C copies, METHOD, B bytes: issue I us, gpu G us, total T us */
function attachTraces(rows: Row[], traces: string[]): void {
  const perRow = REPEATS + 2;
  rows.forEach((row, i) => {
    const parsed = traces.slice(i * perRow + 1, i * perRow + 1 + REPEATS).map((line) => {
      const m = /(\d+) runs, (\d+) copies, \w+, \d+ bytes: issue ([\d.]+) us, gpu ([\d.]+) us/.exec(line);
      return m ? { runs: Number(m[1]), copies: Number(m[2]), issue: Number(m[3]), gpu: Number(m[4]) } : undefined;
    });
    if (parsed.length !== REPEATS || parsed.some((p) => !p)) return;
    row.runs = parsed[0]!.runs;
    row.copies = parsed[0]!.copies;
    row.gpuUs = median(parsed.map((p) => p!.gpu));
    row.issueUs = median(parsed.map((p) => p!.issue));
  });
}

function gpuName(): string {
  try {
    return execFileSync("nvidia-smi", ["--query-gpu=name,driver_version", "--format=csv,noheader"]).toString().trim().split("\n")[0]!;
  } catch {
    return "GPU (nvidia-smi not found)";
  }
}

function print(report: Report, notifications: number): void {
  const d2dGBs = report.memcpyBytes / report.memcpyMs / 1e6; // payload bytes per second
  const lines = [
    "",
    "## KV transfer agent, CUDA IPC on one GPU (bench/transfer_cuda.ts)",
    "",
    `${new Date().toISOString().slice(0, 10)}, one ${gpuName()}, ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), Node ${process.version}; ` +
      "`npx tsx bench/transfer_cuda.ts`. Two processes on the one GPU (so HBM to HBM, not NVLink). " +
      `Medians of ${REPEATS} READs after one warm-up; GB/s = 10^9 payload bytes/s (a copy's read + write traffic is twice that).`,
    "",
    `Ceiling, same run: one cudaMemcpyAsync device to device of ${(report.memcpyBytes / MiB).toFixed(0)} MiB: ${report.memcpyMs.toFixed(3)} ms = ` +
      `${d2dGBs.toFixed(0)} GB/s (${((2 * d2dGBs) / 1000).toFixed(2)} TB/s read + write).`,
    "",
    "| case | method | blocks given as | descriptors | runs → copies | MiB | post ms | READ ms | GB/s | of D2D | GPU ms (trace) | GPU GB/s | GPU of D2D | local kernel ms | words wrong |",
    "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of report.rows) {
    const gpuMs = r.gpuUs !== undefined ? r.gpuUs / 1000 : undefined;
    const readGBs = r.bytes / r.readMs / 1e6;
    const gpuGBs = gpuMs ? r.bytes / gpuMs / 1e6 : undefined;
    lines.push(
      `| ${r.caseName} | ${r.method} | ${r.form} | ${r.descriptors} | ${r.runs ?? "?"} → ${r.copies ?? "?"} | ${(r.bytes / MiB).toFixed(0)} | ${r.postMs.toFixed(2)} | ` +
        `${r.readMs.toFixed(3)} | ${readGBs.toFixed(0)} | ${((100 * readGBs) / d2dGBs).toFixed(0)}% | ${gpuMs?.toFixed(3) ?? "?"} | ` +
        `${gpuGBs?.toFixed(0) ?? "?"} | ${gpuGBs ? ((100 * gpuGBs) / d2dGBs).toFixed(0) + "%" : "?"} | ` +
        `${r.method === "kernel" && r.form === "objects" ? report.localGatherMs[r.caseName]!.toFixed(3) : ""} | ${r.mismatches} |`,
    );
  }
  lines.push(
    "",
    `post ms: the synchronous postRead call (descriptors from JavaScript, checked against the regions); READ ms: postRead until the ` +
      `Promise resolves; GPU ms: the backend's CUDA events around the copy (SWITCHYARD_CUDA_IPC_TRACE=1), the piece list's upload ` +
      `included; local kernel ms: the gather kernel alone on the same pieces within one process. Notifications received by the ` +
      `prefill agent: ${notifications} (one per checked READ).`,
    "",
  );
  for (const c of new Set(report.rows.map((r) => r.caseName))) {
    const variants = KERNEL_VARIANTS.map((v) => `${variantName(v)} ${report.localGatherMs[`${c}|${variantName(v)}`]?.toFixed(3)} ms`);
    lines.push(`Gather kernel alone, ${c}: ${variants.join("; ")}.`, "");
  }
  const table = lines.join("\n");
  console.log(table);
  const out = arg("--out");
  if (out) writeFileSync(out, table);
  if (process.argv.includes("--append")) appendFileSync(new URL("./RESULTS.md", import.meta.url), table);
  const wrong = report.rows.filter((r) => r.mismatches !== 0);
  if (wrong.length) {
    console.error(`WRONG BYTES in ${wrong.length} case(s)`);
    process.exitCode = 1;
  }
}
