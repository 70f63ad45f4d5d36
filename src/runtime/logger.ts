/**
 * Plain one-line logs on stderr: `time level component message`. SWITCHYARD_LOG_LEVEL picks the
 * least severe level shown (debug, info, warn, error; default info).
 */
const LEVELS = { debug: 10, info: 20, warn: 30, error: 40 } as const;
export type LogLevel = keyof typeof LEVELS;

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string, err?: unknown): void;
  error(message: string, err?: unknown): void;
  child(component: string): Logger;
}

export function createLogger(component: string, level: LogLevel = envLevel()): Logger {
  const threshold = LEVELS[level];
  const write = (at: LogLevel, message: string, err?: unknown) => {
    if (LEVELS[at] < threshold) return;
    const cause = err === undefined ? "" : `: ${describeError(err)}`;
    process.stderr.write(`${new Date().toISOString()} ${at.toUpperCase().padEnd(5)} ${component} ${message}${cause}\n`);
  };
  return {
    debug: (m) => write("debug", m),
    info: (m) => write("info", m),
    warn: (m, e) => write("warn", m, e),
    error: (m, e) => write("error", m, e),
    child: (sub) => createLogger(`${component}/${sub}`, level),
  };
}

export function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  let text = err.message;
  for (let cause = err.cause; cause instanceof Error; cause = cause.cause) text += ` (caused by: ${cause.message})`;
  return text;
}

function envLevel(): LogLevel {
  const value = process.env.SWITCHYARD_LOG_LEVEL;
  return value && value in LEVELS ? (value as LogLevel) : "info";
}
