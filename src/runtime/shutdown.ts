/**
 * Graceful shutdown on SIGTERM/SIGINT: run the process's stop function once, bounded by the
 * grace period (SWITCHYARD_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS, default 5), then exit. A second
 * signal exits at once.
 */
import type { Logger } from "./logger.ts";

export function gracePeriodMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.SWITCHYARD_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS;
  if (raw === undefined || raw === "") return 5000;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds < 0) {
    throw new Error(`SWITCHYARD_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS must be a number of seconds >= 0, got '${raw}'`);
  }
  return seconds * 1000;
}

export function exitOnSignals(stop: (gracePeriodMs: number) => Promise<void>, log: Logger): void {
  const grace = gracePeriodMs();
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn(`${signal} again: exiting now`);
      process.exit(1);
    }
    stopping = true;
    log.info(`${signal}: draining for up to ${grace / 1000} s`);
    // The extra second covers the work after draining (closing servers and engines).
    const hardStop = setTimeout(() => {
      log.error("shutdown did not finish in time; exiting");
      process.exit(1);
    }, grace + 1000);
    hardStop.unref();
    stop(grace).then(
      () => process.exit(0),
      (err) => {
        log.error("shutdown failed", err);
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);
}
