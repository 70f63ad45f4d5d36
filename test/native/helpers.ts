/** Small helpers shared by the native-engine tests. */
import type { Engine, EngineOutput, FinishReason, SamplingParams, TokenLogprob, Usage } from "../../src/engine/engine.ts";

export function sampling(overrides: Partial<SamplingParams> = {}): SamplingParams {
  return {
    temperature: 0,
    topP: 1,
    topK: 0,
    minP: 0,
    maxTokens: 8,
    minTokens: 0,
    stopTokenIds: [],
    ignoreEos: true,
    presencePenalty: 0,
    frequencyPenalty: 0,
    repetitionPenalty: 1,
    ...overrides,
  };
}

export interface Collected {
  tokenIds: number[];
  logprobs: TokenLogprob[];
  finishReason?: FinishReason;
  errorMessage?: string;
  usage?: Usage;
  outputs: EngineOutput[];
}

export async function collect(
  engine: Engine,
  requestId: string,
  promptTokenIds: number[],
  params: SamplingParams,
  signal?: AbortSignal,
): Promise<Collected> {
  const c: Collected = { tokenIds: [], logprobs: [], outputs: [] };
  for await (const out of engine.generate({ requestId, promptTokenIds, sampling: params }, signal)) {
    c.outputs.push(out);
    c.tokenIds.push(...out.tokenIds);
    if (out.logprobs) c.logprobs.push(...out.logprobs);
    c.usage = out.usage;
    if (out.finishReason) {
      c.finishReason = out.finishReason;
      c.errorMessage = out.errorMessage;
    }
  }
  return c;
}
