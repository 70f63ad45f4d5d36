/**
 * The KV transfer agent (issue 7, disaggregated serving), in the spirit of NVIDIA NIXL: a
 * worker registers the memory that holds its KV blocks, hands its metadata to peers, and a
 * peer READs blocks straight out of that memory into its own. A decode worker reads the
 * blocks a prefill worker computed, then notifies it (`notification` on the read, or
 * `notify`) so the prefill worker can free them.
 *
 * The agent is native (native/src/transfer/, the switchyard_transfer addon); this module
 * owns its handle and turns its completions into Promises. Reads move over TCP between any
 * two hosts; a read whose peer disappears or stops answering fails with a TransferError
 * ("closed", "timeout") instead of hanging.
 *
 * Backends. TCP always runs: it is the listener and the control channel. UCX (where the addon
 * was built with libucx-dev: `builtTransferBackends()`) runs only when asked for, with
 * `backends: ["ucx", "tcp"]` or SWITCHYARD_TRANSFER_BACKENDS=ucx,tcp; a read of host memory
 * then goes over the first listed backend that both agents run, so a UCX agent still reads
 * from a TCP-only peer, and notifications to a peer follow its reads' backend. TCP stays the
 * default because it is the one that checks every read where it is served: the serving agent
 * does not see UCX reads, and where UCX emulates them (its tcp and shared-memory transports,
 * all it has on one host without RDMA) a peer holding stale metadata reads a region even after
 * it was deregistered, or crashes the serving process if that memory was unmapped since. Ask
 * for UCX where the fabric has RDMA, and free registered memory only once no peer reads it.
 * Device memory of a peer on the same host goes over CUDA IPC whatever `backends` says.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export interface TransferAgentOptions {
  /** Unique among the agents that talk to each other; peers address this agent by it. */
  name: string;
  /** Interface the TCP listener binds (default 127.0.0.1; "0.0.0.0" for other hosts). */
  listenHost?: string;
  /** Default 0: any free port. */
  listenPort?: number;
  /** Host and port peers connect to, when not the listener's own (NAT, proxies). */
  advertiseHost?: string;
  advertisePort?: number;
  /** Default deadline of a read from posting to its last byte (default 10 000 ms). */
  timeoutMs?: number;
  /** Largest piece a block is split into on the wire (default 1 MiB). */
  chunkBytes?: number;
  /** Bytes requested ahead per peer connection (default 16 MiB); UCX: bytes of gets in flight per peer. */
  maxInflightBytes?: number;
  /**
   * Backends that may carry reads of host memory, most preferred first (default: the
   * SWITCHYARD_TRANSFER_BACKENDS environment variable, a comma-separated list, else ["tcp"]).
   * "ucx" needs an addon built with libucx-dev; creating the agent fails otherwise.
   */
  backends?: ReadBackend[];
  /** UCX transports in UCX_TLS syntax ("tcp", "rc,sm"); default: UCX's own choice (UCX_TLS, else all). */
  ucxTransports?: string;
  /**
   * "peer" (default): UCX reports a peer's failure, and a read from it fails at once. UCX 1.13
   * offers it over tcp and verbs only. "none" lets shared memory carry reads on one host; a
   * dead peer is then noticed only at the read's deadline.
   */
  ucxErrorMode?: "peer" | "none";
}

/** Backends a read of host memory can take. */
export type ReadBackend = "tcp" | "ucx";
const READ_BACKENDS: readonly ReadBackend[] = ["tcp", "ucx"];

/** A registered memory region. */
export interface MemoryRegion {
  id: number;
  length: number;
  address: bigint;
  kind: "host" | "cuda";
  deviceId: number;
}

/**
 * A block: bytes [offset, offset + length) of a registered region, or [address, address +
 * length) of the region (on device deviceId) that contains it, as the owner's metadata says.
 */
export type BlockDescriptor =
  | { region: number; offset?: number; length: number }
  | { address: bigint; length: number; deviceId?: number };

/**
 * The compact form of many blocks of one length in one region, for reads of thousands of KV
 * blocks: block i is bytes [offsets[i], offsets[i] + length) of the region. Typed arrays are
 * read in place (no object per block); pair it with another list of as many blocks.
 */
export interface BlockList {
  region: number;
  offsets: Float64Array | Uint32Array | BigUint64Array | readonly number[];
  length: number;
}

export type TransferErrorCode = "invalid" | "rejected" | "timeout" | "closed" | "protocol" | "canceled" | "system";

export class TransferError extends Error {
  readonly code: TransferErrorCode;
  constructor(code: TransferErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "TransferError";
    this.code = code;
  }
}

export interface ReadOptions {
  /** Sent to the remote agent once every byte has arrived. */
  notification?: Uint8Array | string;
  /** Overrides the agent's timeoutMs for this read. */
  timeoutMs?: number;
  /** Aborting cancels the read; it then fails with code "canceled". */
  signal?: AbortSignal;
}

export interface TransferStatus {
  state: "pending" | "done" | "error";
  /** Bytes received so far (all of them when done). */
  bytes: number;
  code?: TransferErrorCode;
  message?: string;
}

export interface Notification {
  from: string;
  bytes: Buffer;
}

/** What this agent served to peers over TCP (UCX reads are one-sided: the serving agent does not see them). */
export interface ServeStats {
  chunksServed: number;
  bytesServed: number;
  readsRejected: number;
  lastRejection?: string;
}

interface NativeAgent {
  name(): string;
  address(): string;
  listenPort(): number;
  backends(): string[];
  registerMemory(memory: ArrayBufferLike | ArrayBufferView): MemoryRegion;
  registerAddress(address: bigint, length: number, kind: string, deviceId: number): MemoryRegion;
  deregisterMemory(id: number): boolean;
  metadata(): Buffer;
  loadRemoteMetadata(blob: Uint8Array): string;
  forgetRemote(name: string): boolean;
  postRead(
    remote: string,
    remoteDescs: BlockDescriptor[] | BlockList,
    localDescs: BlockDescriptor[] | BlockList,
    notification: Uint8Array | string | undefined,
    timeoutMs: number | undefined,
  ): number;
  status(id: number): TransferStatus;
  cancel(id: number): void;
  release(id: number): void;
  sendNotification(peer: string, bytes: Uint8Array | string): void;
  getNotifications(): Notification[];
  stats(): ServeStats;
  setKeepAlive(on: boolean): void;
  close(): void;
}

interface TransferAddon {
  TransferAgent: new (
    options: TransferAgentOptions,
    /** doneBytes: a transfer that finished well, with its bytes; absent for a failed one (ask status). */
    onEvent: (kind: "transfer" | "notification", id: number, doneBytes?: number) => void,
  ) => NativeAgent;
  builtBackends(): string[];
}

const ADDON_PATH = join(dirname(fileURLToPath(import.meta.url)), "../../native/build/Release/switchyard_transfer.node");
let addon: TransferAddon | undefined;

/**
 * UCX's process-wide defaults suit an MPI rank, not a Node process, and UCX reads them once,
 * when its libraries load with the addon; so they are set here, before that, wherever the
 * environment does not set them already:
 * - UCX_HANDLE_ERRORS=none: else UCX puts its own SIGSEGV, SIGBUS, SIGILL and SIGFPE handlers
 *   in place of Node's (and V8's WebAssembly trap handler); they print a backtrace and exit.
 * - UCX_MEM_EVENTS=no, UCX_MEM_MALLOC_HOOKS=no, UCX_MEM_MMAP_HOOK_MODE=none: else UCX patches
 *   libc's mmap and brk code and swaps malloc while V8's threads run them; here that showed as
 *   SIGSEGV inside malloc. Without the hooks UCX keeps no registration cache: over RDMA it
 *   registers the destination of each get as it goes (the serving side's memory is mapped once,
 *   at registerMemory).
 */
const UCX_PROCESS_DEFAULTS: Record<string, string> = {
  UCX_HANDLE_ERRORS: "none",
  UCX_MEM_EVENTS: "no",
  UCX_MEM_MALLOC_HOOKS: "no",
  UCX_MEM_MMAP_HOOK_MODE: "none",
};

function loadTransferAddon(): TransferAddon {
  if (addon) return addon;
  for (const [name, value] of Object.entries(UCX_PROCESS_DEFAULTS)) process.env[name] ??= value;
  if (!existsSync(ADDON_PATH)) {
    throw new Error(
      `the transfer agent is not built (${ADDON_PATH} is missing): run \`npm install\` (or \`npx cmake-js compile -d native -O native/build\`)`,
    );
  }
  addon = createRequire(import.meta.url)(ADDON_PATH) as TransferAddon;
  return addon;
}

/** The backends the addon was built with: "tcp", and "cuda_ipc", "ucx" where their libraries were found. */
export function builtTransferBackends(): string[] {
  return loadTransferAddon().builtBackends();
}

/** SWITCHYARD_TRANSFER_BACKENDS, e.g. "ucx,tcp"; undefined when unset. */
export function backendsFromEnv(env: NodeJS.ProcessEnv = process.env): ReadBackend[] | undefined {
  const raw = env.SWITCHYARD_TRANSFER_BACKENDS?.trim();
  if (!raw) return undefined;
  const names = raw.split(",").map((s) => s.trim());
  for (const name of names) {
    if (!READ_BACKENDS.includes(name as ReadBackend)) {
      throw new TransferError(
        "invalid",
        `SWITCHYARD_TRANSFER_BACKENDS must be a comma-separated list of ${READ_BACKENDS.join(", ")}; got '${raw}'`,
      );
    }
  }
  return names as ReadBackend[];
}

/** Native errors carry `code`; give them this module's type. */
function asTransferError(err: unknown): unknown {
  if (err instanceof TransferError || !(err instanceof Error)) return err;
  const code = (err as Error & { code?: unknown }).code;
  return typeof code === "string" ? new TransferError(code as TransferErrorCode, err.message, { cause: err }) : err;
}

function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw asTransferError(err);
  }
}

/** A posted read: poll `status()` (NIXL style) or await `done`. */
export class Transfer {
  readonly id: number;
  /** Resolves with the bytes read; rejects with a TransferError. */
  readonly done: Promise<{ bytes: number }>;
  #agent: TransferAgent;
  #final: TransferStatus | undefined;
  #settle!: (status: TransferStatus) => void;

  /** @internal */
  constructor(agent: TransferAgent, id: number) {
    this.#agent = agent;
    this.id = id;
    this.done = new Promise((resolve, reject) => {
      this.#settle = (s) => {
        this.#final = s;
        if (s.state === "done") resolve({ bytes: s.bytes });
        else reject(new TransferError(s.code ?? "system", s.message ?? "the transfer failed"));
      };
    });
    // A caller that polls status() instead of awaiting `done` must not see an unhandled rejection.
    this.done.catch(() => {});
  }

  status(): TransferStatus {
    return this.#final ?? this.#agent.nativeStatus(this.id);
  }

  cancel(): void {
    if (!this.#final) this.#agent.nativeCancel(this.id);
  }

  /** @internal */
  settle(status: TransferStatus): void {
    if (!this.#final) this.#settle(status);
  }
}

export class TransferAgent {
  readonly name: string;
  /** "host:port" peers reach this agent at. */
  readonly address: string;
  /** The port the TCP listener is bound to (differs from address's with advertisePort). */
  readonly listenPort: number;
  /** Backends this agent runs (its metadata advertises them): "tcp"; "ucx" when asked for; "cuda_ipc" with CUDA and a GPU. */
  readonly backends: readonly string[];
  #native: NativeAgent;
  #transfers = new Map<number, Transfer>();
  #notifications: Notification[] = [];
  #waiters = new Set<{ from?: string; resolve: (n: Notification) => void; reject: (e: unknown) => void }>();
  #closed = false;

  private constructor(options: TransferAgentOptions) {
    const { TransferAgent: Native } = loadTransferAddon();
    this.#native = callNative(() => new Native(options, (kind, id, doneBytes) => this.#onEvent(kind, id, doneBytes)));
    this.name = this.#native.name();
    this.address = this.#native.address();
    this.listenPort = this.#native.listenPort();
    this.backends = this.#native.backends();
  }

  /** Starts an agent listening on its TCP port (and its UCX worker, when `backends` lists "ucx"). */
  static create(options: TransferAgentOptions): TransferAgent {
    if (!options.name) throw new TransferError("invalid", "a transfer agent needs a name");
    const backends = options.backends ?? backendsFromEnv() ?? ["tcp"];
    return new TransferAgent({ ...options, backends });
  }

  /**
   * Registers host memory (a Buffer, typed array, DataView or ArrayBuffer) for reads by peers
   * and into this agent. The memory stays referenced until deregistered and unused.
   */
  registerMemory(memory: ArrayBufferLike | ArrayBufferView): MemoryRegion {
    return callNative(() => this.#native.registerMemory(memory));
  }

  /**
   * Registers memory owned by native code (e.g. the engine's KV cache) by address. The caller
   * keeps it alive until it is deregistered and no transfer uses it.
   */
  registerAddress(address: bigint, length: number, opts: { kind?: "host" | "cuda"; deviceId?: number } = {}): MemoryRegion {
    return callNative(() => this.#native.registerAddress(address, length, opts.kind ?? "host", opts.deviceId ?? 0));
  }

  /** New reads of the region fail at once; reads already in flight finish. */
  deregisterMemory(region: MemoryRegion | number): boolean {
    return callNative(() => this.#native.deregisterMemory(typeof region === "number" ? region : region.id));
  }

  /** The opaque blob a peer passes to loadRemoteMetadata: name, listener address, regions. */
  metadata(): Buffer {
    return callNative(() => this.#native.metadata());
  }

  /** Loads (or refreshes) a peer's metadata; returns the peer's name. */
  loadRemoteMetadata(blob: Uint8Array): string {
    return callNative(() => this.#native.loadRemoteMetadata(blob));
  }

  forgetRemote(name: string): boolean {
    return callNative(() => this.#native.forgetRemote(name));
  }

  /**
   * Posts a READ of remoteDescs[i] (of agent `remote`) into localDescs[i], for every i.
   * Throws a TransferError ("invalid") at once for a descriptor outside a registered region.
   */
  postRead(
    remote: string,
    remoteDescs: BlockDescriptor[] | BlockList,
    localDescs: BlockDescriptor[] | BlockList,
    options: ReadOptions = {},
  ): Transfer {
    options.signal?.throwIfAborted();
    const id = callNative(() =>
      this.#native.postRead(remote, remoteDescs, localDescs, options.notification, options.timeoutMs),
    );
    const transfer = new Transfer(this, id);
    this.#transfers.set(id, transfer);
    if (options.signal) {
      const signal = options.signal;
      const onAbort = () => transfer.cancel();
      signal.addEventListener("abort", onAbort, { once: true });
      transfer.done.then(
        () => signal.removeEventListener("abort", onAbort),
        () => signal.removeEventListener("abort", onAbort),
      );
    }
    return transfer;
  }

  /** postRead, awaited: resolves when every byte has arrived. */
  read(
    remote: string,
    remoteDescs: BlockDescriptor[] | BlockList,
    localDescs: BlockDescriptor[] | BlockList,
    options: ReadOptions = {},
  ): Promise<{ bytes: number }> {
    return this.postRead(remote, remoteDescs, localDescs, options).done;
  }

  /** Sends a short message (at most 1 MiB) to a peer this agent knows or is connected with. */
  notify(peer: string, bytes: Uint8Array | string): void {
    callNative(() => this.#native.sendNotification(peer, bytes));
  }

  /** Notifications received and not yet taken, oldest first. */
  notifications(): Notification[] {
    this.#drainNative();
    const out = this.#notifications;
    this.#notifications = [];
    return out;
  }

  /** The next notification (from `from`, when given), taking it from the queue. */
  nextNotification(options: { from?: string; signal?: AbortSignal } = {}): Promise<Notification> {
    this.#drainNative();
    const i = this.#notifications.findIndex((n) => options.from === undefined || n.from === options.from);
    if (i >= 0) return Promise.resolve(this.#notifications.splice(i, 1)[0]!);
    if (this.#closed) return Promise.reject(new TransferError("closed", `agent '${this.name}' is closed`));
    options.signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      const waiter = {
        from: options.from,
        resolve: (n: Notification) => {
          cleanup();
          resolve(n);
        },
        reject: (e: unknown) => {
          cleanup();
          reject(e);
        },
      };
      const onAbort = () => waiter.reject(options.signal!.reason);
      const cleanup = () => {
        this.#waiters.delete(waiter);
        options.signal?.removeEventListener("abort", onAbort);
        if (this.#waiters.size === 0 && !this.#closed) this.#native.setKeepAlive(false);
      };
      options.signal?.addEventListener("abort", onAbort, { once: true });
      this.#waiters.add(waiter);
      this.#native.setKeepAlive(true);
    });
  }

  /** What this agent has served to peers, and the last read it refused. */
  stats(): ServeStats {
    return callNative(() => this.#native.stats());
  }

  /** Fails pending reads ("closed"), stops the listener and the I/O thread. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#native.close();
    const closed = () => new TransferError("closed", `agent '${this.name}' was closed`);
    for (const t of this.#transfers.values()) t.settle({ state: "error", bytes: 0, code: "closed", message: closed().message });
    this.#transfers.clear();
    for (const w of [...this.#waiters]) w.reject(closed());
  }

  /** @internal */
  nativeStatus(id: number): TransferStatus {
    return callNative(() => this.#native.status(id));
  }

  /** @internal */
  nativeCancel(id: number): void {
    if (!this.#closed) this.#native.cancel(id);
  }

  #onEvent(kind: "transfer" | "notification", id: number, doneBytes: number | undefined): void {
    if (kind === "notification") {
      this.#drainNative();
      return;
    }
    const transfer = this.#transfers.get(id);
    if (!transfer || this.#closed) return;
    this.#transfers.delete(id);
    const status: TransferStatus = doneBytes === undefined ? this.#native.status(id) : { state: "done", bytes: doneBytes };
    this.#native.release(id);
    transfer.settle(status);
  }

  #drainNative(): void {
    if (!this.#closed) this.#notifications.push(...this.#native.getNotifications());
    for (const w of [...this.#waiters]) {
      const i = this.#notifications.findIndex((n) => w.from === undefined || n.from === w.from);
      if (i < 0) continue;
      w.resolve(this.#notifications.splice(i, 1)[0]!);
    }
  }
}
