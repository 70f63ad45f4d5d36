/**
 * A worker's transfer agent with its engine's KV memory registered: peers read held blocks
 * out of it (prefill side) and it reads fetched blocks into it (decode side). The agent is
 * named by the worker id, so a KvTransferParams.engine_id names both.
 */
import type { EngineKvTransfer, KvMemoryLayout } from "../../engine/engine.ts";
import { TransferAgent, type MemoryRegion, type Notification } from "../../transfer/transfer_agent.ts";

export interface KvTransferAgentOptions {
  /** Interface the agent's TCP listener binds (default 127.0.0.1). */
  host?: string;
  /** Default 0: any free port. */
  port?: number;
  /** Host and port peers connect to, when not the listener's own (NAT, proxies). */
  advertiseHost?: string;
  advertisePort?: number;
  /** Deadline of one read; default 30 000 ms. */
  timeoutMs?: number;
}

export class KvTransferEndpoint {
  readonly agent: TransferAgent;
  readonly layout: KvMemoryLayout;
  /** The engine's KV memory, as registered with the agent. */
  readonly region: MemoryRegion;
  /** The agent's metadata blob; its regions never change after start. */
  readonly metadata: Buffer;
  private closed = false;

  private constructor(agent: TransferAgent, layout: KvMemoryLayout, region: MemoryRegion) {
    this.agent = agent;
    this.layout = layout;
    this.region = region;
    this.metadata = agent.metadata();
  }

  static open(name: string, engineKv: EngineKvTransfer, options: KvTransferAgentOptions): KvTransferEndpoint {
    const host = options.host ?? "127.0.0.1";
    const port = options.port ?? 0;
    let agent: TransferAgent;
    try {
      agent = TransferAgent.create({
        name,
        listenHost: host,
        listenPort: port,
        advertiseHost: options.advertiseHost,
        advertisePort: options.advertisePort,
        timeoutMs: options.timeoutMs,
      });
    } catch (err) {
      throw new Error(`the KV transfer agent of ${name} could not listen on ${host}:${port}`, { cause: err });
    }
    try {
      const layout = engineKv.layout();
      const { memory } = layout;
      const region = "buffer" in memory
        ? agent.registerMemory(memory.buffer)
        : agent.registerAddress(memory.address, memory.length, { kind: memory.kind, deviceId: memory.deviceId });
      return new KvTransferEndpoint(agent, layout, region);
    } catch (err) {
      void agent.close();
      throw new Error(`the KV transfer agent of ${name} could not register the engine's KV memory`, { cause: err });
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** "host:port" peers reach the agent at. */
  get address(): string {
    return this.agent.address;
  }

  /** Calls `onNotification` for every notification peers send, until close. */
  async pumpNotifications(onNotification: (n: Notification) => void): Promise<void> {
    while (!this.closed) {
      let notification: Notification;
      try {
        notification = await this.agent.nextNotification();
      } catch {
        return; // the agent closed
      }
      onNotification(notification);
    }
  }

  /** Fails reads still in flight, stops the listener; the engine's memory may go after this. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agent.close();
  }
}
