/**
 * Stop strings matched on detokenized text, across token boundaries. Text that could still be
 * the beginning of a stop string is held back, so no part of a stop string ever reaches the
 * client: of "Hello wor" with stop "world", " wor" waits; if "ld" follows, the request stops
 * with "Hello" shown, and if "k" follows, " work" goes out.
 */

export interface StopCheck {
  /** Text that may be shown now. */
  text: string;
  /** True when a stop string matched; `text` ends where it began. */
  stopped: boolean;
}

export class StopStringMatcher {
  private readonly stops: readonly string[];
  private held = "";

  constructor(stops: readonly string[]) {
    // An empty stop string would match everywhere; OpenAI ignores it, so do we.
    this.stops = stops.filter((s) => s.length > 0);
  }

  get active(): boolean {
    return this.stops.length > 0;
  }

  /** Feeds newly decoded text. After a stop, nothing more should be fed. */
  push(text: string): StopCheck {
    if (text.length === 0) return { text: "", stopped: false };
    const buffer = this.held + text;
    // The held text holds no complete stop string, so any match ends inside the new text;
    // the earliest start wins.
    let stopAt = -1;
    for (const stop of this.stops) {
      const at = buffer.indexOf(stop);
      if (at >= 0 && (stopAt < 0 || at < stopAt)) stopAt = at;
    }
    if (stopAt >= 0) {
      this.held = "";
      return { text: buffer.slice(0, stopAt), stopped: true };
    }
    const keep = this.longestStopPrefixAtEnd(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return { text: buffer.slice(0, buffer.length - keep), stopped: false };
  }

  /** The held-back text, released when generation ends without a stop. */
  flush(): string {
    const text = this.held;
    this.held = "";
    return text;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private longestStopPrefixAtEnd(text: string): number {
    let best = 0;
    for (const stop of this.stops) {
      for (let len = Math.min(stop.length - 1, text.length); len > best; len--) {
        if (text.endsWith(stop.slice(0, len))) {
          best = len;
          break;
        }
      }
    }
    return best;
  }
}

/** `stop` as OpenAI accepts it (one string, a list, or nothing) as a list. */
export function stopStringList(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return typeof stop === "string" ? [stop] : stop;
}
