/**
 * A Tokenizer that asks an engine's vLLM-style `/tokenize` and `/detokenize` endpoints: exact by
 * construction (the engine computes the ids it will cache), at the cost of a round-trip.
 *
 *   POST /tokenize   {"model","prompt","add_special_tokens"}                       → {"tokens","count","max_model_len"}
 *   POST /tokenize   {"model","messages","add_generation_prompt",...}              → same
 *   POST /detokenize {"model","tokens"}                                            → {"prompt"}
 */
import { Agent, request } from "undici";
import { TokenizerError } from "./errors.ts";
import type { ChatRequestLike, Tokenizer } from "./types.ts";

export interface RemoteTokenizerOptions {
  /** engine base URL, e.g. http://127.0.0.1:8000 */
  baseUrl: string;
  model: string;
  /** eos ids (the /tokenize API does not report them) */
  eosTokenIds?: number[];
  /** per-request timeout, ms (default 10000) */
  timeoutMs?: number;
  /** max concurrent connections to the engine (default 8) */
  connections?: number;
}

interface TokenizeResponse {
  tokens: number[];
  count?: number;
  max_model_len?: number;
}

export class RemoteTokenizer implements Tokenizer {
  readonly model: string;
  readonly baseUrl: string;
  readonly eosTokenIds: number[];
  /** `max_model_len` reported by the engine's last /tokenize answer */
  maxModelLen: number | null = null;
  private readonly timeoutMs: number;
  private readonly agent: Agent;
  private closed = false;

  constructor(opts: RemoteTokenizerOptions) {
    let url: URL;
    try {
      url = new URL(opts.baseUrl);
    } catch {
      throw new TokenizerError(
        "config",
        `remote tokenizer: invalid base URL ${JSON.stringify(opts.baseUrl)}`,
      );
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TokenizerError("config", `remote tokenizer: base URL must be http(s): ${opts.baseUrl}`);
    }
    this.baseUrl = url.href.replace(/\/+$/, "");
    this.model = opts.model;
    this.eosTokenIds = opts.eosTokenIds ?? [];
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.agent = new Agent({
      connections: opts.connections ?? 8,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
    });
  }

  private async post(path: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this.closed) throw new TokenizerError("closed", "remote tokenizer is closed");
    const url = `${this.baseUrl}${path}`;
    let status: number;
    let text: string;
    try {
      const res = await request(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
        dispatcher: this.agent,
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      status = res.statusCode;
      text = await res.body.text();
    } catch (e) {
      throw new TokenizerError("remote", `POST ${url} failed: ${(e as Error).message}`, { cause: e });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new TokenizerError("remote", `POST ${url}: HTTP ${status}, non-JSON body: ${text.slice(0, 200)}`);
    }
    if (status >= 400) {
      const msg =
        (json as { message?: unknown; error?: { message?: unknown } })?.error?.message ??
        (json as { message?: unknown })?.message ??
        text.slice(0, 200);
      // 4xx: the engine rejected the request itself (bad input), 5xx: the engine failed
      throw new TokenizerError(
        status < 500 ? "bad_request" : "remote",
        `POST ${url}: HTTP ${status}: ${String(msg)}`,
      );
    }
    if (json === null || typeof json !== "object") {
      throw new TokenizerError("remote", `POST ${url}: expected a JSON object`);
    }
    return json as Record<string, unknown>;
  }

  private async tokenize(body: Record<string, unknown>): Promise<number[]> {
    const res = (await this.post("/tokenize", { model: this.model, ...body })) as Partial<TokenizeResponse>;
    const tokens = res.tokens;
    if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0)) {
      throw new TokenizerError("remote", `${this.baseUrl}/tokenize: "tokens" is not an array of token ids`);
    }
    if (typeof res.max_model_len === "number") this.maxModelLen = res.max_model_len;
    return tokens;
  }

  async encodePrompt(prompt: string, addSpecialTokens = true): Promise<number[]> {
    if (typeof prompt !== "string") throw new TokenizerError("bad_request", "prompt must be a string");
    return this.tokenize({ prompt, add_special_tokens: addSpecialTokens });
  }

  async encodeChat(req: ChatRequestLike): Promise<number[]> {
    const continueFinal = req.continue_final_message === true;
    const body: Record<string, unknown> = {
      messages: req.messages,
      add_generation_prompt: req.add_generation_prompt ?? !continueFinal,
      continue_final_message: continueFinal,
      add_special_tokens: req.add_special_tokens ?? false,
    };
    if (req.tools !== undefined) body.tools = req.tools;
    if (req.chat_template_kwargs !== undefined) body.chat_template_kwargs = req.chat_template_kwargs;
    return this.tokenize(body);
  }

  /** The engine does not return rendered text: detokenize the chat ids (lossless for byte-level BPE). */
  async renderChat(req: ChatRequestLike): Promise<string> {
    return this.decode(await this.encodeChat(req), false);
  }

  async decode(ids: number[], skipSpecialTokens = false): Promise<string> {
    if (!Array.isArray(ids)) throw new TokenizerError("bad_request", "tokens must be an array of integers");
    // vLLM's /detokenize has no skip_special_tokens flag; pass it for engines that honour it
    const res = await this.post("/detokenize", {
      model: this.model,
      tokens: ids,
      ...(skipSpecialTokens ? { skip_special_tokens: true } : {}),
    });
    if (typeof res.prompt !== "string") {
      throw new TokenizerError("remote", `${this.baseUrl}/detokenize: "prompt" is not a string`);
    }
    return res.prompt;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.agent.close();
  }
}
