/**
 * KV transfer agent, TCP loopback: READ bandwidth of blocks through two agents in this
 * process (their I/O threads do the socket work), next to a plain copy of the same bytes
 * between two Node sockets in the same run: one writes every block, the other copies what
 * it receives into a destination buffer. Both move the same bytes through the kernel's
 * loopback; the agent adds requests, framing and per-block addressing, and receives straight
 * into the destination (the plain copy receives into Node's buffers and copies once more).
 * Where the addon was built with UCX, the same READs (same descriptor lists) also go over the
 * agent's UCX backend: over UCX's tcp transport (error mode "peer", the default) and over
 * shared memory (sysv/posix; error mode "none", which shared memory needs). On one host UCX
 * 1.13 emulates a get with active messages that the serving agent's progress thread answers
 * (its CMA serves only rendezvous): these columns measure that path, not RDMA.
 *
 *   npx tsx bench/transfer_tcp.ts [--append] [--repeats N]   (--append adds the table to bench/RESULTS.md)
 */
import { once } from "node:events";
import { appendFileSync } from "node:fs";
import { createConnection, createServer, type Socket } from "node:net";
import { cpus } from "node:os";
import {
  TransferAgent,
  builtTransferBackends,
  type BlockDescriptor,
  type TransferAgentOptions,
} from "../src/transfer/transfer_agent.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

interface Case {
  blocks: number;
  blockBytes: number;
  chunkBytes?: number;
}

const CASES: Case[] = [
  { blocks: 256, blockBytes: 64 * KiB },
  { blocks: 256, blockBytes: 1 * MiB },
  { blocks: 256, blockBytes: 1 * MiB, chunkBytes: 256 * KiB },
  { blocks: 4096, blockBytes: 4 * KiB },
];

type Variant = { label: string; options: Partial<TransferAgentOptions> };
const UCX_VARIANTS: Variant[] = [
  { label: "agent UCX (tcp)", options: { backends: ["ucx"], ucxTransports: "tcp" } },
  { label: "agent UCX (shm)", options: { backends: ["ucx"], ucxTransports: "sm,self", ucxErrorMode: "none" } },
];
/** The agent's backends measured, beside the plain socket copy. */
const VARIANTS: Variant[] = [{ label: "agent TCP", options: {} }, ...(builtTransferBackends().includes("ucx") ? UCX_VARIANTS : [])];

const repeatsArg = process.argv.indexOf("--repeats");
const REPEATS = repeatsArg > 0 ? Number(process.argv[repeatsArg + 1]) : 5;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const gbps = (bytes: number, ms: number) => bytes / ms / 1e6;

/** A block permutation, so reads land at other block ids than they come from, as KV blocks do. */
function permutation(n: number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  let x = 12345;
  for (let i = n - 1; i > 0; i--) {
    x = (x * 1103515245 + 12345) >>> 0;
    const j = x % (i + 1);
    [p[i], p[j]] = [p[j]!, p[i]!];
  }
  return p;
}

async function agentRead(c: Case, source: Buffer, destination: Buffer, backend: Partial<TransferAgentOptions>): Promise<number[]> {
  const options = { ...backend, ...(c.chunkBytes ? { chunkBytes: c.chunkBytes } : {}) };
  const prefill = TransferAgent.create({ name: "prefill", ...options });
  const decode = TransferAgent.create({ name: "decode", ...options });
  try {
    const remote = prefill.registerMemory(source);
    const local = decode.registerMemory(destination);
    decode.loadRemoteMetadata(prefill.metadata());
    const perm = permutation(c.blocks);
    const remoteDescs: BlockDescriptor[] = perm.map((_, i) => ({ region: remote.id, offset: i * c.blockBytes, length: c.blockBytes }));
    const localDescs: BlockDescriptor[] = perm.map((b) => ({ region: local.id, offset: b * c.blockBytes, length: c.blockBytes }));
    await decode.read("prefill", remoteDescs, localDescs); // connects; not timed
    const ms: number[] = [];
    for (let r = 0; r < REPEATS; r++) {
      destination.fill(0);
      const t0 = performance.now();
      await decode.read("prefill", remoteDescs, localDescs);
      ms.push(performance.now() - t0);
    }
    const last = c.blocks - 1;
    const check = destination.subarray(perm[last]! * c.blockBytes, (perm[last]! + 1) * c.blockBytes);
    if (!check.equals(source.subarray(last * c.blockBytes, (last + 1) * c.blockBytes))) throw new Error("the agent read wrong bytes");
    return ms;
  } finally {
    await Promise.all([prefill.close(), decode.close()]);
  }
}

async function plainSocketCopy(c: Case, source: Buffer, destination: Buffer): Promise<number[]> {
  const total = c.blocks * c.blockBytes;
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, "connection") as Promise<[Socket]>;
  const receiver = createConnection({ host: "127.0.0.1", port });
  receiver.setNoDelay(true);
  await once(receiver, "connect");
  const [sender] = await accepted;
  sender.setNoDelay(true);
  let received = 0;
  let onDone: (() => void) | undefined;
  receiver.on("data", (chunk: Buffer) => {
    chunk.copy(destination, received);
    received += chunk.length;
    if (received === total) onDone?.();
  });
  const ms: number[] = [];
  try {
    for (let r = 0; r <= REPEATS; r++) {
      received = 0;
      const done = new Promise<void>((resolve) => (onDone = resolve));
      const t0 = performance.now();
      for (let b = 0; b < c.blocks; b++) {
        if (!sender.write(source.subarray(b * c.blockBytes, (b + 1) * c.blockBytes))) await once(sender, "drain");
      }
      await done;
      if (r > 0) ms.push(performance.now() - t0); // the first round warms up, as the agent's connect round does
    }
  } finally {
    sender.destroy();
    receiver.destroy();
    server.close();
  }
  if (!destination.subarray(0, c.blockBytes).equals(source.subarray(0, c.blockBytes))) throw new Error("the plain copy read wrong bytes");
  return ms;
}

const rows: string[] = [];
for (const c of CASES) {
  const total = c.blocks * c.blockBytes;
  const source = Buffer.alloc(total);
  for (let i = 0; i < total; i += 4096) source[i] = (i >>> 12) & 0xff;
  const destination = Buffer.alloc(total);
  const agentMs: number[] = [];
  for (const v of VARIANTS) agentMs.push(median(await agentRead(c, source, destination, v.options)));
  const plainMs = median(await plainSocketCopy(c, source, destination));
  const size = c.blockBytes >= MiB ? `${c.blockBytes / MiB} MiB` : `${c.blockBytes / KiB} KiB`;
  const chunk = c.chunkBytes ? `${c.chunkBytes / KiB} KiB` : "1 MiB (default)";
  const agentCells = agentMs.map((ms) => `${ms.toFixed(1)} | ${gbps(total, ms).toFixed(2)}`).join(" | ");
  rows.push(
    `| ${c.blocks} × ${size} | ${(total / MiB).toFixed(0)} MiB | ${chunk} | ${agentCells} | ${plainMs.toFixed(1)} | ${gbps(total, plainMs).toFixed(2)} | ${(plainMs / agentMs[0]!).toFixed(2)}x |`,
  );
  console.log(rows.at(-1));
}

const cpu = cpus()[0]?.model ?? "unknown CPU";
const table = [
  "",
  "## KV transfer agent, loopback (bench/transfer_tcp.ts)",
  "",
  `${new Date().toISOString().slice(0, 10)}, ${cpus().length} cores (${cpu}), Node ${process.version}, \`npx tsx bench/transfer_tcp.ts --append\`.`,
  `Median of ${REPEATS} READs after one untimed warm-up read; GB/s = 10^9 bytes/s.`,
  "",
  `| blocks | bytes | agent chunk | ${VARIANTS.map((v) => `${v.label} ms | ${v.label} GB/s`).join(" | ")} | plain socket copy ms | plain GB/s | agent TCP speedup |`,
  `| --- | ---: | --- | ${VARIANTS.map(() => "---: | ---:").join(" | ")} | ---: | ---: | ---: |`,
  ...rows,
  "",
].join("\n");
console.log(table);
if (process.argv.includes("--append")) appendFileSync(new URL("./RESULTS.md", import.meta.url), table);
