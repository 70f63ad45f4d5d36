/**
 * How long a simulated engine step takes. One step is one forward pass over a mixed batch:
 * prefill chunks (tokens whose KV is actually computed; prefix-cache hits cost nothing) and
 * one token for each decoding request.
 *
 *   stepMs = decodeBaseMs
 *          + prefillMsPerToken       * prefill tokens computed
 *          + decodeMsPerSeq          * decoding requests
 *          + decodeMsPerContextToken * context tokens those requests attend to
 *   simulated duration = stepMs / speedupRatio
 *
 * The defaults are shaped like an 8B-parameter model in bf16 on one H100 (3.35 TB/s HBM,
 * roughly 400 dense TFLOP/s reached in prefill):
 * - decodeBaseMs 5: every forward pass reads all 16 GB of weights once (16 GB / 3.35 TB/s).
 * - prefillMsPerToken 0.05: 2 x 8e9 FLOP per token at ~350 TFLOP/s is ~0.045 ms.
 * - decodeMsPerSeq 0.01: per-request sampling, scheduling and kernel bookkeeping.
 * - decodeMsPerContextToken 0.00004: GQA KV of one token (32 layers x 8 KV heads x 128 dims x
 *   K and V x 2 bytes = 128 KiB) read once per step, 128 KiB / 3.35 TB/s.
 * Prefill attention's own quadratic term is left out: below 32k tokens the linear layers
 * dominate.
 */

export interface TimingConstants {
  decodeBaseMs: number;
  prefillMsPerToken: number;
  decodeMsPerSeq: number;
  decodeMsPerContextToken: number;
}

export const DEFAULT_TIMING: Readonly<TimingConstants> = {
  decodeBaseMs: 5,
  prefillMsPerToken: 0.05,
  decodeMsPerSeq: 0.01,
  decodeMsPerContextToken: 0.00004,
};

/** What a step computes, as far as its duration goes. */
export interface StepWork {
  prefillTokens: number;
  decodeSeqs: number;
  /** Sum over decoding requests of the tokens they attend to (their KV length after the step). */
  decodeContextTokens: number;
}

export class TimingModel {
  readonly constants: Readonly<TimingConstants>;
  readonly speedupRatio: number;

  /**
   * `speedupRatio` divides every duration; 0 (or Infinity) means no simulated cost at all.
   */
  constructor(overrides: Partial<TimingConstants> = {}, speedupRatio = 1) {
    const constants = { ...DEFAULT_TIMING, ...overrides };
    for (const [name, value] of Object.entries(constants)) {
      if (!(value >= 0) || !Number.isFinite(value)) throw new Error(`timing constant ${name} must be a finite number >= 0, got ${value}`);
    }
    if (!(speedupRatio >= 0)) throw new Error(`speedupRatio must be >= 0 (0 means no simulated cost), got ${speedupRatio}`);
    this.constants = constants;
    this.speedupRatio = speedupRatio;
  }

  /** The step's duration at full scale, before the speedup ratio. */
  stepMs(work: StepWork): number {
    if (work.prefillTokens === 0 && work.decodeSeqs === 0) return 0;
    const c = this.constants;
    return (
      c.decodeBaseMs +
      c.prefillMsPerToken * work.prefillTokens +
      c.decodeMsPerSeq * work.decodeSeqs +
      c.decodeMsPerContextToken * work.decodeContextTokens
    );
  }

  /** Wall-clock milliseconds the mocker waits for this step; 0 runs it back to back. */
  simulatedMs(work: StepWork): number {
    if (this.speedupRatio === 0 || this.speedupRatio === Infinity) return 0;
    return this.stepMs(work) / this.speedupRatio;
  }
}
