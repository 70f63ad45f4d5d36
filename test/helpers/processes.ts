/**
 * Real processes for tests: `switchyard` subcommands and nats-server, each on a free loopback
 * port, stopped by the test that started them.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
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

export interface NatsServer {
  url: string;
  port: number;
  stop(): Promise<void>;
  /** Starts it again on the same port (with fresh JetStream state). */
  restart(): Promise<void>;
}

/**
 * A free port below the kernel's ephemeral range. A server restarted on the same port (NATS in
 * the restart test) must find it free again; a port from the ephemeral range can meanwhile
 * become the local end of any outgoing connection on the machine, and the restart then fails.
 */
async function freeFixedPort(): Promise<number> {
  let ephemeralStart = 32768;
  try {
    ephemeralStart = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || ephemeralStart;
  } catch {
    // Not Linux: keep the usual default.
  }
  const low = Math.min(20_000, ephemeralStart - 2000);
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = low + Math.floor(Math.random() * (ephemeralStart - low));
    const server = net.createServer();
    const bound = await new Promise<boolean>((resolve) => {
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => resolve(true));
    });
    if (bound) {
      await new Promise((resolve) => server.close(resolve));
      return port;
    }
  }
  return freePort();
}

export async function startNatsServer(): Promise<NatsServer> {
  const port = await freeFixedPort();
  let child: ChildProcess | undefined;
  let storeDir: string | undefined;
  // Ready when nats-server says so; failing to start (say, the port taken) fails with its log.
  const launch = async () => {
    storeDir = mkdtempSync(join(tmpdir(), "switchyard-nats-"));
    const proc = spawn("nats-server", ["-js", "-a", "127.0.0.1", "-p", String(port), "-sd", storeDir], { stdio: ["ignore", "ignore", "pipe"] });
    child = proc;
    let log = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server on port ${port} not ready after 10 s:\n${log}`)), 10_000);
      proc.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      proc.once("exit", (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`nats-server on port ${port} exited (${code ?? signal}) before it was ready:\n${log}`));
      });
      proc.stderr!.on("data", (d) => {
        if (log.includes("Server is ready")) return;
        log += d;
        if (log.includes("Server is ready")) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
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
