/**
 * Watches that the engine still makes progress: every `intervalMs` it runs the health canary,
 * and after `failuresAllowed + 1` consecutive failures it declares the engine dead. The worker
 * then takes itself out of service (the caller deregisters and exits non-zero), because a
 * worker that accepts requests it can never finish is worse than no worker.
 */
import type { Engine } from "../engine/engine.ts";
import type { Logger } from "../runtime/logger.ts";
import { runCanary, type HealthCheckPayload } from "./health_check.ts";

export interface EngineMonitorOptions {
  intervalMs?: number;
  /** A canary queued behind a full batch is slow, not dead: give it time. */
  canaryTimeoutMs?: number;
  failuresAllowed?: number;
}

export class EngineMonitor {
  private timer?: NodeJS.Timeout;
  private failures = 0;
  private stopped = false;

  constructor(
    private readonly engine: Engine,
    private readonly payload: HealthCheckPayload,
    private readonly onDead: (reason: string) => void,
    private readonly log: Logger,
    private readonly options: EngineMonitorOptions = {},
  ) {}

  start(): void {
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.check(), this.options.intervalMs ?? 2000);
  }

  private async check(): Promise<void> {
    const result = await runCanary(this.engine, this.payload, this.options.canaryTimeoutMs ?? 10_000);
    if (this.stopped) return;
    if (result.healthy) {
      this.failures = 0;
    } else if (++this.failures > (this.options.failuresAllowed ?? 1)) {
      this.stopped = true;
      this.onDead(result.message);
      return;
    } else {
      this.log.warn(`engine health check failed (${this.failures}): ${result.message}`);
    }
    this.schedule();
  }
}
