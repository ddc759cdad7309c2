import type { IncomingMessage, ServerResponse } from "node:http";
import FindMyWay from "find-my-way";
import { sendJson } from "../util/http-json.ts";
import { audio } from "./audio.ts";
import { completion } from "./completions.ts";
import type { MockEngine } from "./engine.ts";
import {
  chatRequestOf,
  HttpError,
  isTokenIds,
  modelOf,
  optBool,
  rankParam,
  readJson,
  tokenizing,
} from "./http-request.ts";
import { embeddings, rerank, score } from "./pooling.ts";
import { cancelResponse, retrieveResponse } from "./response-store.ts";
import { responses } from "./responses.ts";

/**
 * The engine's route table (vLLM's OpenAI-compatible surface plus the mock's debug and admin
 * endpoints) and the handlers of everything but completions:
 *   POST /v1/completions, /v1/chat/completions, /v1/responses (JSON or SSE), GET /v1/responses/{id},
 *   POST /v1/responses/{id}/cancel, GET /v1/models,
 *   POST /v1/embeddings, /score, /v1/score, /rerank, /v1/rerank, /v2/rerank,
 *   /v1/audio/transcriptions, /v1/audio/translations, /tokenize, /detokenize, GET /health, /version, /metrics, POST /reset_prefix_cache,
 *   GET /debug/kv-cache[?rank=N], POST /admin/events/pause|resume[?rank=N].
 */

export type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void> | void;

type Method = "GET" | "POST";

/** Resolves a request's method and path to its handler; 404 / 405 as an HttpError. */
export type Routes = (method: string, path: string) => Handler;

async function tokenize(engine: MockEngine, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const o = engine.o;
  const tok = engine.tokenizer;
  const body = await readJson(req, o.maxBodyBytes);
  modelOf(engine, body);
  const tokens = await tokenizing(async () => {
    if (body.messages !== undefined) return await tok.encodeChat(chatRequestOf(body));
    if (typeof body.prompt === "string") {
      return await tok.encodePrompt(body.prompt, optBool(body, "add_special_tokens") ?? true);
    }
    throw new HttpError(400, "give either prompt (a string) or messages", "prompt");
  });
  let tokenStrs: string[] | null = null;
  if (optBool(body, "return_token_strs") === true) {
    tokenStrs = [];
    for (const t of tokens) tokenStrs.push(await tok.decode([t], false));
  }
  sendJson(res, 200, { count: tokens.length, max_model_len: o.maxModelLen, tokens, token_strs: tokenStrs });
}

async function detokenize(engine: MockEngine, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const body = await readJson(req, engine.o.maxBodyBytes);
  modelOf(engine, body);
  if (!isTokenIds(body.tokens)) throw new HttpError(400, "tokens must be a list of token ids", "tokens");
  sendJson(res, 200, {
    prompt: await engine.tokenizer.decode(body.tokens, optBool(body, "skip_special_tokens") ?? false),
  });
}

function models(engine: MockEngine) {
  const o = engine.o;
  const created = Math.floor(engine.started / 1000);
  const entry = (id: string, root: string, parent: string | null) => ({
    id,
    object: "model",
    created,
    owned_by: "vllm",
    root,
    parent,
    max_model_len: o.maxModelLen,
    permission: [],
  });
  return {
    object: "list",
    data: [entry(o.model, o.model, null), ...o.loraModules.map((l) => entry(l, l, o.model))],
  };
}

function table(engine: MockEngine): Array<[Method, string, Handler]> {
  const o = engine.o;
  const log = engine.log;
  return [
    ["POST", "/v1/completions", (q, s) => completion(engine, q, s, false)],
    ["POST", "/v1/chat/completions", (q, s) => completion(engine, q, s, true)],
    ["POST", "/v1/responses", (q, s) => responses(engine, q, s)],
    ["GET", "/v1/responses/:id", (q, s, url) => retrieveResponse(engine, q, s, url)],
    ["POST", "/v1/responses/:id/cancel", (q, s, url) => cancelResponse(engine, q, s, url)],
    ["POST", "/v1/embeddings", (q, s) => embeddings(engine, q, s)],
    ["POST", "/score", (q, s) => score(engine, q, s)],
    ["POST", "/v1/score", (q, s) => score(engine, q, s)],
    ["POST", "/rerank", (q, s) => rerank(engine, q, s)],
    ["POST", "/v1/rerank", (q, s) => rerank(engine, q, s)],
    ["POST", "/v2/rerank", (q, s) => rerank(engine, q, s)],
    ["POST", "/v1/audio/transcriptions", (q, s) => audio(engine, q, s)],
    ["POST", "/v1/audio/translations", (q, s) => audio(engine, q, s)],
    ["GET", "/v1/models", (_q, s) => sendJson(s, 200, models(engine))],
    ["POST", "/tokenize", (q, s) => tokenize(engine, q, s)],
    ["POST", "/detokenize", (q, s) => detokenize(engine, q, s)],
    [
      "GET",
      "/health",
      (_q, s) => {
        s.writeHead(200, { "content-length": 0 });
        s.end();
      },
    ],
    ["GET", "/version", (_q, s) => sendJson(s, 200, { version: "0.0.0-kvsync-mock" })],
    [
      "GET",
      "/metrics",
      async (_q, s) => {
        const text = await engine.metrics.registry.metrics();
        s.writeHead(200, { "content-type": engine.metrics.registry.contentType });
        s.end(text);
      },
    ],
    [
      "POST",
      "/reset_prefix_cache",
      (_q, s, url) => {
        const ranks = rankParam(engine, url, false);
        const failed = ranks.filter((r) => !r.scheduler.resetPrefixCache()).map((r) => r.index);
        log.info({ event: "engine.reset_prefix_cache", failed }, "reset prefix cache");
        if (failed.length > 0) {
          throw new HttpError(
            409,
            `prefix cache not reset on rank(s) ${failed.join(",")}: blocks are in use by requests`,
          );
        }
        s.writeHead(200, { "content-length": 0 });
        s.end();
      },
    ],
    [
      "GET",
      "/debug/kv-cache",
      (_q, s, url) => {
        const [rank] = rankParam(engine, url, true);
        sendJson(s, 200, {
          ...engine.kvCacheSnapshot(rank),
          rank: rank.index,
          block_size: o.blockSize,
          stats: rank.cache.stats(),
          scheduler: {
            running: rank.scheduler.numRunning,
            waiting: rank.scheduler.numWaiting,
            steps: rank.scheduler.steps,
            preemptions: rank.scheduler.preemptions,
          },
          publisher: rank.publisher?.snapshot() ?? null,
        });
      },
    ],
    [
      "POST",
      "/admin/events/pause",
      (_q, s, url) => {
        for (const r of rankParam(engine, url, false)) r.publisher?.pause();
        sendJson(s, 200, { paused: true });
      },
    ],
    [
      "POST",
      "/admin/events/resume",
      (_q, s, url) => {
        for (const r of rankParam(engine, url, false)) r.publisher?.resume();
        sendJson(s, 200, { paused: false });
      },
    ],
  ];
}

/** The route table on find-my-way; each route's handler is kept as its store. */
export function engineRoutes(engine: MockEngine): Routes {
  const router = FindMyWay();
  const methods = new Set<Method>();
  for (const [method, path, handler] of table(engine)) {
    router.on(method, path, unrouted, handler);
    methods.add(method);
  }
  return (method, path) => {
    const found = router.find(method as FindMyWay.HTTPMethod, path);
    if (found !== null) return found.store as Handler;
    for (const m of methods) {
      if (router.find(m, path) !== null) throw new HttpError(405, `Method ${method} not allowed for ${path}`);
    }
    throw new HttpError(404, `Not Found: ${path}`);
  };
}

/** find-my-way's own handler slot: dispatch goes through the store, so this never runs. */
function unrouted(): void {
  throw new Error("engine routes dispatch through the route's store");
}
