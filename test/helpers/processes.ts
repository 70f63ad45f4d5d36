/**
 * Real processes for tests: `switchyard` subcommands and nats-server, each on a free loopback
 * port, stopped by the test that started them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const root = join(import.meta.dirname, "..", "..");

export interface Proc {
  child: ChildProcess;
  /** The URL the process printed on stdout, without a trailing /v1. */
  url: string;
  output(): string;
  /** Resolves with the exit code (or signal name). */
  exited: Promise<number | string>;
}

const STARTUP_TIMEOUT_MS = 30_000;

/** Starts `switchyard <args>` and waits for the URL it prints once it serves. */
export async function startSwitchyard(args: string[], env: Record<string, string> = {}): Promise<Proc> {
  const child = spawn(process.execPath, [join(root, "bin", "switchyard.mjs"), ...args], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, SWITCHYARD_LOG_LEVEL: "info", ...env },
  });
  let log = "";
  child.stderr!.on("data", (d) => (log += d));
  const exited = new Promise<number | string>((resolve) => child.once("exit", (code, signal) => resolve(code ?? signal ?? -1)));
  let out = "";
  // A process that neither serves nor exits fails the test with what it logged, not a timeout.
  const startup = setTimeout(() => child.kill("SIGKILL"), STARTUP_TIMEOUT_MS);
  try {
    for await (const chunk of child.stdout!) {
      out += chunk;
      const match = out.match(/^(https?:\/\/\S+)$/m);
      if (match) {
        child.stdout!.resume();
        return { child, url: match[1].replace(/\/v1$/, ""), output: () => log, exited };
      }
    }
  } finally {
    clearTimeout(startup);
  }
  throw new Error(`switchyard ${args.join(" ")} exited (or was killed after ${STARTUP_TIMEOUT_MS / 1000} s) before serving:\n${log}`);
}

export async function stop(proc: Proc | undefined, signal: NodeJS.Signals = "SIGTERM"): Promise<number | string | undefined> {
  if (!proc) return undefined;
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill(signal);
  return proc.exited;
}

export async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1", () => {
        socket.destroy();
        resolve(true);
      });
      socket.on("error", () => resolve(false));
    });
    if (ok) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing listens on port ${port} after ${timeoutMs} ms`);
}

export interface NatsServer {
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Starts it again on the same port (with fresh JetStream state). */
  restart(): Promise<void>;
}

export async function startNatsServer(): Promise<NatsServer> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  let storeDir: string | undefined;
  const launch = async () => {
    storeDir = mkdtempSync(join(tmpdir(), "switchyard-nats-"));
    child = spawn("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], { stdio: "ignore" });
    child.once("error", () => {});
    await waitForPort(port, 10_000);
  };
  const halt = async () => {
    if (child && child.exitCode === null) {
      child.kill("SIGKILL");
      await once(child, "exit");
    }
    if (storeDir) rmSync(storeDir, { recursive: true, force: true });
  };
  await launch();
  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    stop: halt,
    restart: async () => {
      await halt();
      await launch();
    },
  };
}
