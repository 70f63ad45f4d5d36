/**
 * The model's Hugging Face tokenizer, loaded from tokenizer.json and tokenizer_config.json in
 * the model folder (ModelCard.path) with @lenml/tokenizers, once per folder per process.
 *
 * Besides encode/decode it exposes what detokenization needs per token: for byte-level BPE
 * tokenizers (GPT-2 style: Qwen, Llama 3) each token id stands for a fixed byte string, which
 * lets the detokenizer stream bytes instead of re-decoding windows of tokens.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { TokenizerLoader } from "@lenml/tokenizers";

type LenmlTokenizer = ReturnType<typeof TokenizerLoader.fromPreTrained>;

export class TokenizerLoadError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TokenizerLoadError";
  }
}

const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);

export class ModelTokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** Ids that end generation unless ignore_eos: the tokenizer's eos and generation_config.json's. */
  readonly eosTokenIds: readonly number[];
  /** The chat template (Jinja source), if the model has one. */
  readonly chatTemplate: string | undefined;
  /** True when every token id maps to a fixed byte string (decoder type ByteLevel). */
  readonly isByteLevel: boolean;
  private readonly specialIds: Set<number>;
  private readonly addedTokenIds: Set<number>;
  /** tokenBytes by id, filled on first use of each id (hot: once per generated token). */
  private readonly byteCache: (Uint8Array | null)[];
  /** The byte each byte-level character stands for, by char code; -1 for none. */
  private readonly charToByte: Int16Array | undefined;

  constructor(
    private readonly inner: LenmlTokenizer,
    tokenizerJson: { decoder?: { type?: string } | null },
    tokenizerConfig: Record<string, unknown>,
    generationEosIds: number[],
    chatTemplateFile: string | undefined,
  ) {
    this.bosToken = inner.bos_token;
    this.eosToken = inner.eos_token;
    const eos = new Set(generationEosIds);
    if (inner.eos_token_id !== undefined) eos.add(inner.eos_token_id);
    this.eosTokenIds = [...eos];
    this.specialIds = new Set(inner.all_special_ids);
    this.addedTokenIds = new Set(inner.added_tokens.map((t) => t.id));
    this.chatTemplate = chatTemplateFile ?? pickChatTemplate(tokenizerConfig.chat_template);
    const byteDecoder = (inner.decoder as unknown as { byte_decoder?: Record<string, number> } | null)?.byte_decoder;
    this.isByteLevel = tokenizerJson.decoder?.type === "ByteLevel" && byteDecoder !== undefined;
    // Filled with null rather than left with holes, so V8 keeps it a fast array.
    this.byteCache = new Array<Uint8Array | null>(this.isByteLevel ? this.vocabSize : 0).fill(null);
    if (this.isByteLevel) {
      const codes = Object.keys(byteDecoder!).map((ch) => ch.charCodeAt(0));
      this.charToByte = new Int16Array(Math.max(...codes) + 1).fill(-1);
      for (const [ch, byte] of Object.entries(byteDecoder!)) this.charToByte[ch.charCodeAt(0)] = byte;
    }
  }

  encode(text: string, addSpecialTokens: boolean): number[] {
    return this.inner.encode(text, { add_special_tokens: addSpecialTokens });
  }

  decode(ids: readonly number[], skipSpecialTokens: boolean): string {
    if (ids.length === 0) return "";
    return this.inner.decode(ids as number[], { skip_special_tokens: skipSpecialTokens });
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }

  /** Number of ids the vocabulary defines, added tokens included. */
  get vocabSize(): number {
    return (this.inner.model as unknown as { vocab: string[] }).vocab.length;
  }

  /** The token's vocabulary entry, e.g. "Ġworld"; undefined for an id outside the vocabulary. */
  vocabEntry(id: number): string | undefined {
    return (this.inner.model as unknown as { vocab: string[] }).vocab[id];
  }

  /** The id of a vocabulary entry (e.g. "Ġworld" or "<|im_end|>"). */
  tokenId(entry: string): number | undefined {
    return (this.inner.model as unknown as { tokens_to_ids: Map<string, number> }).tokens_to_ids.get(entry);
  }

  /**
   * The bytes a token stands for (byte-level tokenizers only; call isByteLevel first). Added
   * tokens are their literal text; ids outside the vocabulary are empty.
   */
  tokenBytes(id: number): Uint8Array {
    const cached = this.byteCache[id];
    if (cached) return cached;
    const entry = this.vocabEntry(id);
    let bytes: Uint8Array;
    if (entry === undefined) bytes = EMPTY;
    else if (this.addedTokenIds.has(id)) bytes = utf8.encode(entry);
    else {
      const charToByte = this.charToByte!;
      bytes = new Uint8Array(entry.length);
      for (let i = 0; i < entry.length; i++) {
        const code = entry.charCodeAt(i);
        // As the tokenizer's own decoder does, a character outside the byte alphabet reads as 0.
        bytes[i] = code < charToByte.length && charToByte[code] >= 0 ? charToByte[code] : 0;
      }
    }
    if (id < this.byteCache.length) this.byteCache[id] = bytes;
    return bytes;
  }
}

function pickChatTemplate(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  // Newer configs hold a list of named templates; "default" is the chat one.
  if (Array.isArray(value)) {
    const named = value.find((t) => t && typeof t === "object" && (t as { name?: unknown }).name === "default");
    const template = (named as { template?: unknown } | undefined)?.template;
    if (typeof template === "string") return template;
  }
  return undefined;
}

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Record<string, unknown>;
  } catch (err) {
    throw new TokenizerLoadError(`cannot read ${path}: ${(err as Error).message}`, { cause: err });
  }
}

function generationConfigEosIds(folder: string): number[] {
  const path = join(folder, "generation_config.json");
  if (!existsSync(path)) return [];
  const value = readJson(path).eos_token_id;
  if (typeof value === "number") return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === "number");
  return [];
}

/** Loads a folder's tokenizer; throws TokenizerLoadError naming the file that is missing or bad. */
export function loadTokenizer(folder: string): ModelTokenizer {
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) {
    if (!existsSync(join(folder, file))) throw new TokenizerLoadError(`model folder ${folder} has no ${file}`);
  }
  const tokenizerJson = readJson(join(folder, "tokenizer.json"));
  const tokenizerConfig = readJson(join(folder, "tokenizer_config.json"));
  const templatePath = join(folder, "chat_template.jinja");
  const templateFile = existsSync(templatePath) ? readFileSync(templatePath, "utf8") : undefined;
  let inner: LenmlTokenizer;
  try {
    inner = TokenizerLoader.fromPreTrained({ tokenizerJSON: tokenizerJson, tokenizerConfig } as Parameters<typeof TokenizerLoader.fromPreTrained>[0]);
  } catch (err) {
    throw new TokenizerLoadError(`cannot build the tokenizer of ${folder}: ${(err as Error).message}`, { cause: err });
  }
  return new ModelTokenizer(inner, tokenizerJson as { decoder?: { type?: string } }, tokenizerConfig, generationConfigEosIds(folder), templateFile);
}

const cache = new Map<string, ModelTokenizer>();

/** The tokenizer of a model folder, loaded on first use and kept for the process's life. */
export function tokenizerFor(folder: string): ModelTokenizer {
  let tokenizer = cache.get(folder);
  if (tokenizer === undefined) {
    tokenizer = loadTokenizer(folder);
    cache.set(folder, tokenizer);
  }
  return tokenizer;
}
