import type { IncomingMessage } from "node:http";
import { isTokenizerError, type TokenizerError } from "../tokenize/errors.ts";
import type { ChatRequestLike, Tokenizer } from "../tokenize/types.ts";
import { readBody as readBodyWithin } from "../util/http-body.ts";
import type { MockEngine, Rank } from "./engine.ts";

/**
 * Request parsing of the engine's HTTP surface: the body, the fields vLLM's OpenAI server
 * validates, the prompt's token ids and the data-parallel rank, each refused with vLLM's
 * status and message.
 */

/** An error answered as vLLM's ErrorResponse: `{"error":{"message","type","param","code"}}`. */
export class HttpError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  constructor(status: number, message: string, param: string | null = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.type =
      status === 404
        ? "NotFoundError"
        : status === 413
          ? "RequestEntityTooLarge"
          : status === 405
            ? "MethodNotAllowed"
            : status === 409
              ? "Conflict"
              : status === 503
                ? "ServiceUnavailableError"
                : status >= 500
                  ? "InternalServerError"
                  : "BadRequestError";
  }
}

export type Json = Record<string, unknown>;

function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  return readBodyWithin(req, limit, {
    tooLarge: () => new HttpError(413, `request body exceeds ${limit} bytes`),
    closed: () => new HttpError(499, "client closed the request"),
  });
}

export async function readJson(req: IncomingMessage, limit: number): Promise<Json> {
  const buf = await readBody(req, limit);
  let v: unknown;
  try {
    v = JSON.parse(buf.toString("utf8"));
  } catch {
    throw new HttpError(400, "request body is not valid JSON");
  }
  if (v === null || typeof v !== "object" || Array.isArray(v))
    throw new HttpError(400, "request body must be a JSON object");
  return v as Json;
}

// ---- field validation ----

export function optInt(body: Json, name: string, min: number): number | null {
  const v = body[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new HttpError(400, `${name} must be an integer >= ${min}`, name);
  }
  return v;
}

export function optBool(body: Json, name: string): boolean | null {
  const v = body[name];
  if (v === undefined || v === null) return null;
  if (typeof v !== "boolean") throw new HttpError(400, `${name} must be a boolean`, name);
  return v;
}

export function isTokenIds(v: unknown): v is number[] {
  return (
    Array.isArray(v) && v.every((x) => typeof x === "number" && Number.isInteger(x) && x >= 0 && x < 2 ** 31)
  );
}

function tokenizerHttpError(err: TokenizerError): HttpError {
  if (err.code === "overloaded") return new HttpError(503, err.message);
  if (err.code === "bad_request") return new HttpError(400, err.message);
  return new HttpError(500, `tokenizer: ${err.message}`);
}

/** Runs a tokenizer call, turning its errors into the HTTP status vLLM answers with. */
export async function tokenizing<T>(f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (err) {
    if (isTokenizerError(err)) throw tokenizerHttpError(err);
    throw err;
  }
}

// ---- engine-aware fields ----

/** The LoRA adapter the `model` field names (the base model when absent). */
export function modelOf(engine: MockEngine, body: Json): { loraId: number | null; loraName: string | null } {
  const m = body.model;
  if (m !== undefined && m !== null && typeof m !== "string")
    throw new HttpError(400, "model must be a string", "model");
  const l = engine.loraOf((m as string | undefined) ?? undefined);
  if (l === undefined) throw new HttpError(404, `The model \`${m}\` does not exist.`, "model");
  return l;
}

/**
 * vLLM's `cache_salt` (a non-empty string, or absent): it isolates the request's prefix cache.
 * Engines without salts (the SGLang 2025 flavor) ignore it, as those versions did.
 */
export function cacheSaltOf(engine: MockEngine, body: Json): string | null {
  const v = body.cache_salt;
  if (v === undefined || v === null) return null;
  if (typeof v !== "string" || v === "")
    throw new HttpError(400, "cache_salt must be a non-empty string", "cache_salt");
  return engine.o.flavor === "sglang-2025" ? null : v;
}

export function maxTokensOf(body: Json): number | null {
  const a = optInt(body, "max_tokens", 1);
  const b = optInt(body, "max_completion_tokens", 1);
  return b ?? a;
}

export function checkLength(engine: MockEngine, promptLen: number, maxTokens: number | null): void {
  const o = engine.o;
  if (promptLen === 0) throw new HttpError(400, "The prompt cannot be empty.", "prompt");
  const total = promptLen + (maxTokens ?? 0);
  if (promptLen >= o.maxModelLen || total > o.maxModelLen) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${o.maxModelLen} tokens. However, you requested ${
        maxTokens === null ? promptLen : total
      } tokens (${promptLen} in the messages, ${maxTokens ?? 0} in the completion). Please reduce the length of the messages or completion.`,
      "max_tokens",
    );
  }
}

/** A request that could not run even alone in the whole cache is refused up front. */
export function checkFits(engine: MockEngine, promptLen: number, maxTokens: number | null): void {
  const o = engine.o;
  const out = maxTokens ?? Math.min(o.maxOutputTokens, o.maxModelLen - promptLen);
  const need = engine.ranks[0].scheduler.blocksNeeded(promptLen, out); // same cache shape on every rank
  if (need > o.numGpuBlocks) {
    throw new HttpError(
      400,
      `request needs up to ${need} KV blocks (prompt ${promptLen} + ${out} output tokens, block size ${o.blockSize}) but the cache has ${o.numGpuBlocks}`,
    );
  }
}

/** The rank a generation runs on: the X-data-parallel-rank header, else the engine's choice. */
export function rankOf(engine: MockEngine, req: IncomingMessage): Rank {
  const h = req.headers["x-data-parallel-rank"];
  const r = engine.pickRank(Array.isArray(h) ? h[0] : h);
  if (typeof r === "string") throw new HttpError(400, r);
  return r;
}

// ---- the model endpoints' common steps ----

/** What a model endpoint reads first: the JSON body, the adapter its `model` names, the name answered back. */
export async function readModelRequest(
  engine: MockEngine,
  req: IncomingMessage,
): Promise<{ body: Json; lora: { loraId: number | null; loraName: string | null }; model: string }> {
  const body = await readJson(req, engine.o.maxBodyBytes);
  const lora = modelOf(engine, body);
  return { body, lora, model: (body.model as string | undefined) ?? engine.o.model };
}

/**
 * Admits a request's tokenized prompts (each within the context length and the cache, or vLLM's
 * 400) and picks the rank they run on. `maxTokens`: the generation's bound (null: up to the
 * context), or "prefill" for a pooling request (no output; the cache must hold one more token).
 */
export function admitPrompts(
  engine: MockEngine,
  req: IncomingMessage,
  prompts: readonly number[][],
  maxTokens: number | null | "prefill",
): Rank {
  for (const p of prompts) {
    checkLength(engine, p.length, maxTokens === "prefill" ? null : maxTokens);
    checkFits(engine, p.length, maxTokens === "prefill" ? 1 : maxTokens);
  }
  return rankOf(engine, req);
}

/** The ranks an admin/debug endpoint acts on: `?rank=N`, else all (or the only one if required). */
export function rankParam(engine: MockEngine, url: URL, required: boolean): Rank[] {
  const v = url.searchParams.get("rank");
  if (v === null) {
    if (required && engine.ranks.length > 1) {
      throw new HttpError(
        400,
        `this engine has ${engine.ranks.length} data-parallel ranks: give ?rank=N`,
        "rank",
      );
    }
    return required ? [engine.ranks[0]] : engine.ranks;
  }
  const r = Number(v);
  if (!Number.isInteger(r) || r < 0 || r >= engine.ranks.length) {
    throw new HttpError(400, `rank must be an integer in [0, ${engine.ranks.length - 1}]`, "rank");
  }
  return [engine.ranks[r]];
}

// ---- prompts ----

export function chatRequestOf(body: Json): ChatRequestLike {
  if (!Array.isArray(body.messages) || body.messages.length === 0) {
    throw new HttpError(400, "messages must be a non-empty array", "messages");
  }
  for (const m of body.messages) {
    if (m === null || typeof m !== "object" || typeof (m as Json).role !== "string") {
      throw new HttpError(400, "each message needs a string role", "messages");
    }
  }
  const kw = body.chat_template_kwargs;
  if (kw !== undefined && kw !== null && (typeof kw !== "object" || Array.isArray(kw))) {
    throw new HttpError(400, "chat_template_kwargs must be an object", "chat_template_kwargs");
  }
  if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools)) {
    throw new HttpError(400, "tools must be an array", "tools");
  }
  return {
    messages: body.messages as ChatRequestLike["messages"],
    tools: (body.tools as unknown[] | null | undefined) ?? undefined,
    add_generation_prompt: optBool(body, "add_generation_prompt") ?? true,
    continue_final_message: optBool(body, "continue_final_message") ?? false,
    chat_template_kwargs: (kw as Record<string, unknown> | null | undefined) ?? undefined,
    add_special_tokens: optBool(body, "add_special_tokens") ?? false,
  };
}

/** The token ids of a completion's `prompt`: a string, token ids, or a list of either. */
export async function encodeCompletionPrompt(tok: Tokenizer, body: Json): Promise<number[][]> {
  const p = body.prompt;
  const special = optBool(body, "add_special_tokens") ?? true;
  if (typeof p === "string") return [await tok.encodePrompt(p, special)];
  if (isTokenIds(p)) return [p];
  if (Array.isArray(p) && p.length > 0) {
    const out: number[][] = [];
    for (const x of p) {
      if (typeof x === "string") out.push(await tok.encodePrompt(x, special));
      else if (isTokenIds(x)) out.push(x);
      else throw new HttpError(400, "prompt must be a string, a list of strings, or token ids", "prompt");
    }
    return out;
  }
  throw new HttpError(400, "prompt must be a string, a list of strings, or token ids", "prompt");
}
