import type { IncomingMessage, ServerResponse } from "node:http";
import {
  embeddingChat,
  encodePair,
  scorePairs,
  scoreSides,
  scoreText,
  scoreTexts,
} from "../tokenize/inputs.ts";
import { sendJson } from "../util/http-json.ts";
import type { MockEngine, Rank } from "./engine.ts";
import {
  admitPrompts,
  encodeCompletionPrompt,
  HttpError,
  optBool,
  optInt,
  readModelRequest,
  tokenizing,
} from "./http-request.ts";
import { EngineRequest, SchedulerFullError } from "./scheduler.ts";

/**
 * vLLM's pooling endpoints on the mock engine: `/v1/embeddings`, `/score` (`/v1/score`) and
 * `/rerank` (`/v1/rerank`, `/v2/rerank`). Each prompt is a prefill-only request through the
 * rank's scheduler, so it hits, fills and evicts the prefix cache and publishes KV events like
 * a completion's prompt (vLLM caches prefixes of decoder-only pooling models with last-token
 * pooling, such as Qwen3-Embedding; README.md says more). The vectors are not a model's:
 * a normalised sum of one pseudo-random vector per token id, so equal texts embed equally and
 * texts sharing words lie close; a score is the two sides' cosine mapped into [0, 1].
 */

/** width of the fake embeddings (a request's `dimensions` may ask for fewer) */
export const EMBEDDING_DIM = 256;

interface Lora {
  loraId: number | null;
  loraName: string | null;
}

/** Run one prompt's prefill on `rank`; resolves with the tokens found cached (null: aborted). */
export function prefillOnly(
  engine: MockEngine,
  rank: Rank,
  prompt: number[],
  lora: Lora,
  res: ServerResponse,
): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const req = new EngineRequest({
      id: engine.nextId("pool"),
      prompt,
      output: [],
      finishReason: "stop",
      ...lora,
      hooks: {
        onToken: () => undefined,
        onFinish: (reason) => {
          if (reason !== "abort") {
            engine.metrics.requestSuccess.inc({
              model_name: engine.o.model,
              engine: String(rank.index),
              finished_reason: reason,
            });
          }
          resolve(reason === "abort" ? null : (req.cachedTokens ?? 0));
        },
      },
    });
    try {
      rank.scheduler.submit(req);
    } catch (err) {
      reject(err instanceof SchedulerFullError ? new HttpError(503, err.message) : err);
      return;
    }
    res.once("close", () => {
      if (!res.writableFinished) rank.scheduler.abort(req);
    });
  });
}

/** Prefill every prompt (concurrently, as one batch of requests); null when the client left. */
async function prefillAll(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
  prompts: number[][],
  lora: Lora,
): Promise<number | null> {
  const rank = admitPrompts(engine, req, prompts, "prefill");
  const cached = await Promise.all(prompts.map((p) => prefillOnly(engine, rank, p, lora, res)));
  if (cached.some((c) => c === null)) return null;
  return (cached as number[]).reduce((a, b) => a + b, 0);
}

/** A deterministic unit-length vector for a token sequence. */
export function fakeEmbedding(tokens: number[], dim = EMBEDDING_DIM): Float32Array {
  const v = new Float32Array(dim);
  for (const t of tokens) {
    // xorshift32 seeded by the token id: the same token always adds the same vector
    let x = Math.imul(t + 1, 2654435761) | 1;
    for (let i = 0; i < dim; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      v[i] += ((x >>> 0) / 4294967296 - 0.5) * 2;
    }
  }
  return normalize(v);
}

function normalize(v: Float32Array): Float32Array {
  let n = 0;
  for (let i = 0; i < v.length; i++) n += v[i] * v[i];
  const s = n > 0 ? 1 / Math.sqrt(n) : 0;
  for (let i = 0; i < v.length; i++) v[i] *= s;
  return v;
}

function cosine(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d += a[i] * b[i];
  return d;
}

const usage = (prompt: number, cached: number) => ({
  prompt_tokens: prompt,
  total_tokens: prompt,
  completion_tokens: 0,
  prompt_tokens_details: { cached_tokens: cached },
});

const sum = (ps: number[][]) => ps.reduce((a, p) => a + p.length, 0);

export async function embeddings(
  engine: MockEngine,
  req: IncomingMessage,
  res: ServerResponse,
): Promise<void> {
  const tok = engine.tokenizer;
  const { body, lora, model } = await readModelRequest(engine, req);
  const format = body.encoding_format ?? "float";
  if (format !== "float" && format !== "base64")
    throw new HttpError(400, "encoding_format must be float or base64", "encoding_format");
  const dims = optInt(body, "dimensions", 1) ?? EMBEDDING_DIM;
  if (dims > EMBEDDING_DIM)
    throw new HttpError(400, `dimensions must be at most ${EMBEDDING_DIM} for this model`, "dimensions");
  const chat = embeddingChat(body);
  const prompts = await tokenizing(async () => {
    if (chat !== null) return [await tok.encodeChat(chat)];
    if (body.input === undefined) throw new HttpError(400, "input is required", "input");
    return encodeCompletionPrompt(tok, {
      prompt: body.input,
      add_special_tokens: optBool(body, "add_special_tokens") ?? true,
    });
  });
  const cached = await prefillAll(engine, req, res, prompts, lora);
  if (cached === null) return;
  const data = prompts.map((p, index) => {
    const full = fakeEmbedding(p);
    const v = dims === EMBEDDING_DIM ? full : normalize(full.slice(0, dims));
    const embedding =
      format === "base64"
        ? Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64")
        : Array.from(v);
    return { index, object: "embedding", embedding };
  });
  sendJson(res, 200, {
    id: engine.nextId("embd"),
    object: "list",
    created: Math.floor(Date.now() / 1000),
    model,
    data,
    usage: usage(sum(prompts), cached),
  });
}

/** The pairs' token ids and their scores, shared by /score and /rerank. */
async function scorePrompts(
  engine: MockEngine,
  pairs: Array<[string, string]>,
): Promise<{ prompts: number[][]; scores: number[] }> {
  const tok = engine.tokenizer;
  const prompts: number[][] = [];
  const scores: number[] = [];
  await tokenizing(async () => {
    for (const [q, d] of pairs) {
      prompts.push(await encodePair(tok, q, d));
      const qe = fakeEmbedding(await tok.encodePrompt(q, false));
      const de = fakeEmbedding(await tok.encodePrompt(d, false));
      scores.push((cosine(qe, de) + 1) / 2);
    }
  });
  return { prompts, scores };
}

export async function score(engine: MockEngine, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { body, lora, model } = await readModelRequest(engine, req);
  const pairs = await tokenizing(async () => {
    const { a, b } = scoreSides(body);
    return scorePairs(scoreTexts(a, "queries"), scoreTexts(b, "documents"));
  });
  const { prompts, scores } = await scorePrompts(engine, pairs);
  const cached = await prefillAll(engine, req, res, prompts, lora);
  if (cached === null) return;
  sendJson(res, 200, {
    id: engine.nextId("score"),
    object: "list",
    created: Math.floor(Date.now() / 1000),
    model,
    data: scores.map((s, index) => ({ index, object: "score", score: s })),
    usage: usage(sum(prompts), cached),
  });
}

export async function rerank(engine: MockEngine, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const { body, lora, model } = await readModelRequest(engine, req);
  const topN = optInt(body, "top_n", 0) ?? 0;
  const { query, docs } = await tokenizing(async () => {
    if (!Array.isArray(body.documents)) throw new HttpError(400, "documents must be a list", "documents");
    return { query: scoreText(body.query, "query"), docs: scoreTexts(body.documents, "documents") };
  });
  const { prompts, scores } = await scorePrompts(
    engine,
    docs.map((d) => [query, d]),
  );
  const cached = await prefillAll(engine, req, res, prompts, lora);
  if (cached === null) return;
  const results = docs
    .map((text, index) => ({ index, document: { text }, relevance_score: scores[index] }))
    .sort((x, y) => y.relevance_score - x.relevance_score || x.index - y.index);
  const n = sum(prompts);
  sendJson(res, 200, {
    id: engine.nextId("rerank"),
    model,
    usage: { prompt_tokens: n, total_tokens: n },
    results: topN > 0 ? results.slice(0, topN) : results,
  });
}
