/**
 * Model name → Tokenizer, from `--tokenizer <model>=<dir>|remote|remote:<url>` specs.
 *
 *   Qwen/Qwen3-0.6B=/models/qwen3          local tokenizer.json (+ tokenizer_config.json) in the dir
 *   meta-llama/Llama-3.1-8B=remote         ask the engine's /tokenize (URL given at lookup)
 *   my-model=remote:http://10.0.0.5:8000   ask that engine's /tokenize
 *
 * `DEFAULT_MODEL` (Qwen/Qwen3-0.6B) is registered with the bundled tokenizer unless a spec overrides
 * it. Local tokenizers are wrapped in a TokenizerPool (long prompts encoded in worker threads)
 * unless `pool: false`; instances are created once per model (remote: per model and URL).
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { TokenizerError } from "./errors.ts";
import { DEFAULT_MODEL, defaultTokenizerDir, type LoadOptions, loadTokenizer } from "./hf-tokenizer.ts";
import { TokenizerPool, type TokenizerPoolOptions } from "./pool.ts";
import { RemoteTokenizer, type RemoteTokenizerOptions } from "./remote-tokenizer.ts";
import type { Tokenizer } from "./types.ts";

export type TokenizerSpec =
  | { model: string; kind: "local"; dir: string }
  | { model: string; kind: "remote"; baseUrl: string | null };

/** Parse one `<model>=<dir>|remote|remote:<url>` spec; throws TokenizerError("config") with the spec in the message. */
export function parseTokenizerSpec(spec: string): TokenizerSpec {
  const bad = (why: string) =>
    new TokenizerError(
      "config",
      `invalid --tokenizer ${JSON.stringify(spec)}: ${why} (expected <model>=<dir>|remote)`,
    );
  if (typeof spec !== "string") throw bad("not a string");
  // model names contain "/" but not "="; split at the first "="
  const eq = spec.indexOf("=");
  if (eq === -1) throw bad('missing "="');
  const model = spec.slice(0, eq).trim();
  const value = spec.slice(eq + 1).trim();
  if (model === "") throw bad("empty model name");
  if (value === "") throw bad("empty tokenizer location");
  if (value === "remote") return { model, kind: "remote", baseUrl: null };
  if (value.startsWith("remote:")) {
    const url = value.slice("remote:".length);
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw bad(`invalid URL ${JSON.stringify(url)}`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw bad(`URL must be http(s): ${url}`);
    return { model, kind: "remote", baseUrl: url };
  }
  const dir = resolve(value);
  if (!existsSync(join(dir, "tokenizer.json"))) throw bad(`no tokenizer.json in ${dir}`);
  return { model, kind: "local", dir };
}

export interface TokenizerRegistryOptions {
  /** `--tokenizer` specs; a later spec for the same model wins */
  specs?: string[];
  /** register DEFAULT_MODEL with the bundled Qwen3 tokenizer (default true) */
  includeDefault?: boolean;
  /** worker pool options for local tokenizers, or false for plain in-thread tokenizers */
  pool?: TokenizerPoolOptions | false;
  load?: LoadOptions;
  /** options for remote tokenizers (baseUrl/model are filled in) */
  remote?: Omit<RemoteTokenizerOptions, "baseUrl" | "model">;
}

export class TokenizerRegistry {
  private readonly specs = new Map<string, TokenizerSpec>();
  private readonly instances = new Map<string, Promise<Tokenizer>>();
  private readonly opts: TokenizerRegistryOptions;

  constructor(opts: TokenizerRegistryOptions = {}) {
    this.opts = opts;
    if (opts.includeDefault ?? true) {
      this.specs.set(DEFAULT_MODEL, { model: DEFAULT_MODEL, kind: "local", dir: defaultTokenizerDir() });
    }
    for (const s of opts.specs ?? []) {
      const spec = parseTokenizerSpec(s);
      this.specs.set(spec.model, spec);
    }
  }

  /** Shorthand: `TokenizerRegistry.fromSpecs(cliOpts.tokenizer ?? [])`. */
  static fromSpecs(specs: string[], opts: Omit<TokenizerRegistryOptions, "specs"> = {}): TokenizerRegistry {
    return new TokenizerRegistry({ ...opts, specs });
  }

  models(): string[] {
    return [...this.specs.keys()];
  }

  has(model: string): boolean {
    return this.specs.has(model);
  }

  spec(model: string): TokenizerSpec | undefined {
    return this.specs.get(model);
  }

  /**
   * The Tokenizer for `model`. For a bare `remote` spec, `baseUrl` names the engine to ask
   * (e.g. the engine the request is routed to).
   */
  get(model: string, opts: { baseUrl?: string } = {}): Promise<Tokenizer> {
    const spec = this.specs.get(model);
    if (spec === undefined) {
      return Promise.reject(
        new TokenizerError(
          "unknown_model",
          `no tokenizer for model ${JSON.stringify(model)} (known: ${this.models().join(", ") || "none"}); ` +
            `add --tokenizer ${model}=<dir>|remote`,
        ),
      );
    }
    if (spec.kind === "remote") {
      const baseUrl = spec.baseUrl ?? opts.baseUrl;
      if (!baseUrl) {
        return Promise.reject(
          new TokenizerError(
            "config",
            `model ${JSON.stringify(model)} uses a remote tokenizer but no engine URL was given`,
          ),
        );
      }
      const key = `remote\u0000${model}\u0000${baseUrl}`;
      let p = this.instances.get(key);
      if (p === undefined) {
        try {
          p = Promise.resolve(new RemoteTokenizer({ ...this.opts.remote, baseUrl, model }));
        } catch (e) {
          return Promise.reject(e);
        }
        this.instances.set(key, p);
      }
      return p;
    }
    const key = `local\u0000${model}`;
    let p = this.instances.get(key);
    if (p === undefined) {
      const poolOpts = this.opts.pool;
      p = loadTokenizer(model, spec.dir, this.opts.load).then((t) =>
        poolOpts === false ? t : new TokenizerPool(t, poolOpts ?? {}),
      );
      this.instances.set(key, p);
      p.catch(() => this.instances.delete(key));
    }
    return p;
  }

  /** Close every tokenizer created so far (worker pools, HTTP agents). */
  async close(): Promise<void> {
    const all = [...this.instances.values()];
    this.instances.clear();
    await Promise.all(
      all.map(async (p) => {
        try {
          await (await p).close?.();
        } catch {
          // a tokenizer that failed to load has nothing to close
        }
      }),
    );
  }
}
