/**
 * KV transfer agent, CUDA IPC on one GPU (issue 7): two processes, as CUDA IPC requires. This
 * one ("prefill") fills a KV pool in its cudaMalloc'd memory and registers it; a child process
 * ("decode") registers a pool of its own, loads the prefill agent's metadata and READs blocks
 * through the agent's CUDA IPC backend, against the device-to-device copy bandwidth measured
 * in the same run (one cudaMemcpyAsync of the same bytes, in the decode process, for each size).
 *
 * The KV pool has a Qwen3-0.6B-shaped layout: 28 layers x (K, V) segments, each segment a
 * row of blocks of 16 tokens x 8 KV heads x 128 x bf16 = 32 KiB. The KV of a 4096-token prompt
 * is 256 blocks: 256 x 56 = 14 336 descriptors of 32 KiB, 448 MiB. Cases: the blocks at random
 * pool positions on both sides (nothing merges), at consecutive positions on both sides (the
 * backend merges each segment's 256 blocks into one run), the earlier hand check's 256 x 1 MiB,
 * and end-to-end bandwidth against size: 64 MiB, 448 MiB and 2 GiB in 1 MiB blocks, 2 GiB in
 * 16 MiB blocks (block lists, the default method only). Each READ is checked word by word on the GPU (the pool holds words that name
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
const POOL_BLOCKS = 2560; // per segment: 4.4 GiB per process (room for a 2 GiB read's ceiling copy)
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
  /** Read only as block lists by the backend's default method (the bandwidth-vs-size cases). */
  large?: boolean;
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
    contiguousCase(64, MiB),
    contiguousCase(448, MiB),
    contiguousCase(2048, MiB),
    contiguousCase(128, 16 * MiB),
  ];
}

/** `count` blocks of `blockBytes`, consecutive in the remote pool, landing in reverse order locally. */
function contiguousCase(count: number, blockBytes: number): Case {
  const pairs: [number, number, number][] = [];
  for (let i = 0; i < count; i++) pairs.push([i * blockBytes, (count - 1 - i) * blockBytes, blockBytes]);
  const size = count * blockBytes >= 1024 * MiB ? `${(count * blockBytes) / (1024 * MiB)} GiB` : `${(count * blockBytes) / MiB} MiB`;
  return { name: `${size} as ${count} × ${blockBytes / MiB} MiB`, pairs, large: true };
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

const caseBytes = (c: Case) => c.pairs.reduce((sum, p) => sum + p[2], 0);
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
  /** From the worker seeing the copy's event done to the Promise's continuation running (median). */
  toJsUs?: number;
  /** process.hrtime at each timed READ's continuation, ns (matched with the trace's "done at"). */
  resolvedNs: number[];
  /** READ ms with the event loop kept busy (a setImmediate chain): the thread that takes the completion never sleeps. */
  busyReadMs?: number;
  /** READs the row made, each with a trace line: a warm-up, the timed ones, the checked one, the busy-loop ones. */
  reads: number;
  runs?: number;
  copies?: number;
  mismatches: number;
}

interface Report {
  rows: Row[];
  /** The D2D ceiling of each read size: one cudaMemcpyAsync of that many bytes, ms (median). */
  memcpyMs: Record<number, number>;
  localGatherMs: Record<string, number>;
}

// ---- decode side (the child process) ----

async function decodeSide(metadata: Buffer): Promise<Report> {
  const tools = cudaTools();
  const pool = tools.alloc(POOL_BYTES);
  const rows: Row[] = [];
  const localGatherMs: Record<string, number> = {};
  try {
    // The ceilings: one plain device-to-device copy of each read's size inside this pool.
    const memcpyMs: Record<number, number> = {};
    for (const bytes of new Set(cases().map(caseBytes))) {
      memcpyMs[bytes] = median(tools.memcpyMs(pool + BigInt(POOL_BYTES - bytes), pool, bytes, REPEATS));
      progress(`cudaMemcpyAsync of ${bytes} bytes: ${memcpyMs[bytes]!.toFixed(3)} ms`);
    }
    for (const c of cases()) {
      // The same kernel on local memory, no IPC and no agent: what the GPU part can reach.
      // (Source and destination in one pool: pieces may overlap, which only matters to the bytes.)
      const local = new BigUint64Array(c.pairs.length * 3);
      c.pairs.forEach(([from, to, n], i) => local.set([pool + BigInt(from), pool + BigInt(to), BigInt(n)], 3 * i));
      localGatherMs[c.name] = median(tools.gatherMs(local, REPEATS, 4, true)); // what the backend launches
      if (c.large) continue;
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
          if (c.large && method !== "kernel") continue;
          for (const form of method === "kernel" && !c.large ? FORMS : (["block list"] as const)) {
            const [remote, locals] = descriptors(c, form, remoteRegion, region.id);
            const bytes = caseBytes(c);
            await agent.read(peer, remote, locals); // warm-up: maps the peer's memory, sizes buffers
            const post: number[] = [];
            const read: number[] = [];
            const resolvedNs: number[] = [];
            for (let r = 0; r < REPEATS; r++) {
              const t0 = performance.now();
              const transfer = agent.postRead(peer, remote, locals);
              post.push(performance.now() - t0);
              await transfer.done;
              read.push(performance.now() - t0);
              resolvedNs.push(Number(process.hrtime.bigint())); // CLOCK_MONOTONIC, as the trace's steady_clock
            }
            // Poison, then one more read (with its notification) that must rewrite every word.
            tools.fillPattern(pool, POOL_BYTES, SEED ^ 0xdead);
            await agent.read(peer, remote, locals, { notification: `${method}: ${c.name}` });
            const check = new BigUint64Array(c.pairs.length * 3);
            c.pairs.forEach(([from, to, n], i) => check.set([pool + BigInt(to), BigInt(from), BigInt(n)], 3 * i));
            const mismatches = tools.countMismatches(check, SEED);
            // The same READs while the event loop spins: what a process busy with other work sees.
            let busyReadMs: number | undefined;
            if (method === "kernel" && form === "block list") {
              const busy: number[] = [];
              await whileLoopBusy(async () => {
                for (let r = 0; r < REPEATS; r++) {
                  const t0 = performance.now();
                  await agent.postRead(peer, remote, locals).done;
                  busy.push(performance.now() - t0);
                }
              });
              busyReadMs = median(busy);
            }
            rows.push({
              caseName: c.name, method, form, descriptors: c.pairs.length, bytes, postMs: median(post), readMs: median(read), resolvedNs,
              busyReadMs, reads: REPEATS + 2 + (busyReadMs === undefined ? 0 : REPEATS), mismatches,
            });
            progress(`${method}, ${form}, ${c.name}: post ${median(post).toFixed(2)} ms, READ ${median(read).toFixed(3)} ms, ${mismatches} words wrong`);
          }
        }
      } finally {
        await agent.close();
      }
    }
    return { rows, memcpyMs, localGatherMs };
  } finally {
    freeQuietly(tools, pool);
  }
}

/** Runs `work` while a setImmediate chain keeps the event loop polling (never blocking in epoll). */
async function whileLoopBusy(work: () => Promise<void>): Promise<void> {
  let spinning = true;
  const spin = () => {
    if (spinning) setImmediate(spin);
  };
  setImmediate(spin);
  try {
    await work();
  } finally {
    spinning = false;
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

/** cuda_ipc trace: read N: D descriptors, R runs, C copies, METHOD, B bytes: issue I us, gpu G us, total T us, FORM, done at NS ns */
function attachTraces(rows: Row[], traces: string[]): void {
  let first = 0; // the row's warm-up READ
  rows.forEach((row) => {
    const timed = traces.slice(first + 1, first + 1 + REPEATS);
    first += row.reads;
    const parsed = timed.map((line) => {
      const m = /(\d+) runs, (\d+) copies, \w+, \d+ bytes: issue ([\d.]+) us, gpu ([\d.]+) us, .* done at (\d+) ns/.exec(line);
      return m ? { runs: Number(m[1]), copies: Number(m[2]), issue: Number(m[3]), gpu: Number(m[4]), doneNs: Number(m[5]) } : undefined;
    });
    if (parsed.length !== REPEATS || parsed.some((p) => !p)) return;
    row.runs = parsed[0]!.runs;
    row.copies = parsed[0]!.copies;
    row.gpuUs = median(parsed.map((p) => p!.gpu));
    row.issueUs = median(parsed.map((p) => p!.issue));
    row.toJsUs = median(parsed.map((p, k) => (row.resolvedNs[k]! - p!.doneNs) / 1000));
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
  const gbs = (bytes: number, ms: number) => bytes / ms / 1e6; // payload bytes per second
  const ceilingMs = (bytes: number) => report.memcpyMs[bytes]!;
  const ofD2d = (bytes: number, ms: number) => (100 * ceilingMs(bytes)) / ms;
  const sizes = Object.keys(report.memcpyMs).map(Number).sort((a, b) => a - b);
  const lines = [
    "",
    "## KV transfer agent, CUDA IPC on one GPU (bench/transfer_cuda.ts)",
    "",
    `${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, one ${gpuName()}, ${cpus().length} cores (${cpus()[0]?.model ?? "?"}), Node ${process.version}; ` +
      "`npx tsx bench/transfer_cuda.ts`. Two processes on the one GPU (so HBM to HBM, not NVLink). " +
      `Medians of ${REPEATS} READs after one warm-up; GB/s = 10^9 payload bytes/s (a copy's read + write traffic is twice that).`,
    "",
    "Ceilings, same run: one cudaMemcpyAsync device to device of each read's size (CUDA events): " +
      sizes.map((b) => `${(b / MiB).toFixed(0)} MiB ${ceilingMs(b).toFixed(3)} ms = ${gbs(b, ceilingMs(b)).toFixed(0)} GB/s`).join("; ") +
      ".",
    "",
    "| case | method | blocks given as | descriptors | runs → copies | MiB | post ms | READ ms | D2D ms | READ GB/s | READ of D2D | GPU ms (trace) | GPU of D2D | done → JS µs | READ ms, loop busy (of D2D) | local kernel ms | words wrong |",
    "| --- | --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of report.rows) {
    const gpuMs = r.gpuUs !== undefined ? r.gpuUs / 1000 : undefined;
    // Once per case: on its objects row, or its one row (the large cases are read as block lists only).
    const showLocal = r.method === "kernel" && (r.form === "objects" || !report.rows.some((o) => o.caseName === r.caseName && o.form === "objects"));
    lines.push(
      `| ${r.caseName} | ${r.method} | ${r.form} | ${r.descriptors} | ${r.runs ?? "?"} → ${r.copies ?? "?"} | ${(r.bytes / MiB).toFixed(0)} | ${r.postMs.toFixed(2)} | ` +
        `${r.readMs.toFixed(3)} | ${ceilingMs(r.bytes).toFixed(3)} | ${gbs(r.bytes, r.readMs).toFixed(0)} | ${ofD2d(r.bytes, r.readMs).toFixed(0)}% | ` +
        `${gpuMs?.toFixed(3) ?? "?"} | ${gpuMs ? ofD2d(r.bytes, gpuMs).toFixed(0) + "%" : "?"} | ${r.toJsUs?.toFixed(0) ?? "?"} | ` +
        `${r.busyReadMs === undefined ? "" : `${r.busyReadMs.toFixed(3)} (${ofD2d(r.bytes, r.busyReadMs).toFixed(0)}%)`} | ` +
        `${showLocal ? report.localGatherMs[r.caseName]!.toFixed(3) : ""} | ${r.mismatches} |`,
    );
  }
  const reached = report.rows.filter((r) => r.method === "kernel" && r.form === "block list" && ofD2d(r.bytes, r.readMs) >= 80);
  const missed = report.rows.filter((r) => r.method === "kernel" && r.form === "block list" && ofD2d(r.bytes, r.readMs) < 80);
  lines.push(
    "",
    `post ms: the synchronous postRead call (descriptors from JavaScript, checked against the regions, and for block lists ` +
      `the copy issued); READ ms: postRead until the Promise's continuation runs; D2D ms: the ceiling for the read's size; ` +
      `GPU ms: the backend's CUDA events around the copy (SWITCHYARD_CUDA_IPC_TRACE=1), the offsets' or piece list's upload ` +
      `included; done → JS: from the backend's worker seeing the copy's event complete to the continuation (one clock, ` +
      `CLOCK_MONOTONIC); READ ms, loop busy: the same READs while a setImmediate chain keeps the event loop polling, so the ` +
      `thread the completion goes to is not asleep; local kernel ms: the piece-list gather kernel alone on the same pieces within one process. ` +
      `Notifications received by the prefill agent: ${notifications} (one per checked READ).`,
    "",
    `At ≥ 80% of D2D end to end (kernel, block lists): ${reached.map((r) => r.caseName).join("; ") || "none"}. ` +
      `Below: ${missed.map((r) => `${r.caseName} (${ofD2d(r.bytes, r.readMs).toFixed(0)}%)`).join("; ") || "none"}.`,
    "",
  );
  for (const c of new Set(report.rows.map((r) => r.caseName))) {
    if (report.localGatherMs[`${c}|${variantName(KERNEL_VARIANTS[0]!)}`] === undefined) continue;
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
