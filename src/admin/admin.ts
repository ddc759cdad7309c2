/**
 * The admin HTTP API of `kvsync index` and `kvsync gateway` (with its route explain, explain.ts):
 *
 *   GET  /healthz                       {"status":"ok", ...the process's health (event-loop delay)}
 *   GET  /readyz                        200 {"status":"ready", ...} | 503 {"status":"not ready", ...}
 *        (the readiness report: discovery, pods, streams live / waiting / given up)
 *   GET  /metrics                       Prometheus text of the registry
 *   GET  /admin/pods                    one entry per stream (pod, or pod and DP rank):
 *        [{name, rank, stream, model, lora, ready, healthy, healthReason, state, lastSeq, eventsApplied, blocks,
 *          decodeErrors, gaps, replays, resyncs, restarts, blockSize, declaredBlockSize, warnings,
 *          lagSeconds, trust, suspect}]
 *        (`lora`: the adapters the pod serves; a pod without an events endpoint, or whose port
 *        layout is refused, appears once with stream/state null; `warnings`: configuration
 *        problems, each {code, message}; `trust`: the gateway's weight of the stream's cache
 *        claims, 0..1, `suspect` when it stays low (the prediction feedback), null/false on `kvsync index`)
 *   GET  /admin/pods/<name>/blocks[?rank=N]
 *        {"blocks":[{"hash":"<canonical text>","tiers":["GPU"]}]}, sorted by hash; a DP pod
 *        without ?rank lists every rank's blocks, each with its "rank"
 *   GET  /admin/live                    the dashboard's feed, server-sent events (live.ts)
 *   GET  /, /dashboard/<file>           the dashboard (dashboard.ts, web/dashboard/)
 *   POST /admin/index/match  {"model","lora"?,"token_ids"|"prompt","block_size"?}
 *        {"blockSize":16,"tokens":n,"pods":[{"pod","rank","stream","blockSize","matchedBlocks","matchedTokens",
 *          "tiers":{"GPU":blocks,"CPU":blocks,"STORAGE":blocks}}]}  (best match first; without
 *        "block_size" each stream is matched in its own block size, learned from its events)
 *
 * Errors use OpenAI's shape `{"error":{"message","type","param","code"}}`. `createAdminHandler`
 * returns the request handler; `.route(method, path, fn)` adds routes (e.g. the gateway's
 * `POST /admin/route/explain`), which take precedence over the built-in ones.
 */
import { type IncomingMessage, METHODS, type ServerResponse } from "node:http";
import FindMyWay, { type HTTPMethod } from "find-my-way";
import type { Registry } from "prom-client";
import { DEFAULT_BLOCK_SIZE, type PodInfo } from "../discovery/types.ts";
import {
  type PodStream,
  podStreamIds,
  type StreamStatus,
  type SubscriberManagerLike,
} from "../events/types.ts";
import type { RouteActivity } from "../gateway/activity.ts";
import { badRequest, GatewayError, sendError } from "../gateway/errors.ts";
import { readBody } from "../gateway/request.ts";
import type { PrefixIndex, StreamMatch } from "../index/types.ts";
import { hashToText } from "../protocol/hash.ts";
import type { TokenizerLookup } from "../tokenize/lookup.ts";
import type { Tokenizer } from "../tokenize/types.ts";
import { sendJson } from "../util/http-json.ts";
import { type Logger, silentLogger } from "../util/log.ts";
import { dashboardRoutes } from "./dashboard.ts";
import { FleetView } from "./fleet-view.ts";
import { LiveFeed, type LiveOptions } from "./live.ts";
import type { AdminPodEntry, AdminRouteHandler, AdminWarning } from "./types.ts";

export type { AdminPodEntry, AdminRouteHandler } from "./types.ts";

export interface AdminDeps {
  index: PrefixIndex;
  /** the subscriber manager (`subscribers` is accepted as an alias) */
  manager?: SubscriberManagerLike | null;
  subscribers?: SubscriberManagerLike | null;
  registry: Registry;
  /** the pods: a PodSet-like object or a function; default: the manager's `pods()` if it has one */
  pods?: { pods(): PodInfo[] } | (() => PodInfo[]);
  /** for `"prompt"` in match requests (`tokenizer` is accepted as an alias) */
  tokenizers?: TokenizerLookup;
  tokenizer?: TokenizerLookup;
  /** more warnings for a stream's row of /admin/pods (the gateway's never-matches watch) */
  streamWarnings?: (streamId: string) => AdminWarning[];
  /**
   * the gateway's prediction feedback: each stream's trust and whether it is suspect, and a way to
   * hear changes (absent: `trust` is null)
   */
  streamTrust?: {
    stream(streamId: string): { trust: number; suspect: boolean } | null;
    onChange?(fn: () => void): unknown;
  };
  /** a pod's health signal for /admin/pods (the gateway's); absent: `healthy` is null */
  health?: (pod: string) => { healthy: boolean; reason: string | null } | null;
  /** readiness for /readyz (default: always ready); a report's fields go into the body */
  ready?: () => boolean | { ready: boolean };
  /** what /healthz reports beside its status (the event-loop delay) */
  process?: () => Record<string, unknown>;
  /** block size when neither the request nor the model's pods name one */
  defaultBlockSize?: number;
  /** request body cap (bytes) */
  maxBodyBytes?: number;
  /** the gateway's routing activity: the dashboard's routing panel (absent: fleet only) */
  activity?: RouteActivity | null;
  /** the live feed's tick, bounds and client cap */
  live?: Partial<LiveOptions>;
  log?: Logger;
}

const noop = () => undefined;
/** every method node:http parses, so a known path with another method gets its own answer */
const ALL_METHODS = METHODS as HTTPMethod[];

export interface AdminHandler {
  (req: IncomingMessage, res: ServerResponse): Promise<void>;
  /** Add a route (exact path); returns the handler for chaining. */
  route(method: string, path: string, fn: AdminRouteHandler): AdminHandler;
  /** Handle the request if a route matches; false (nothing sent) otherwise. */
  handle(req: IncomingMessage, res: ServerResponse): Promise<boolean>;
}

const methodNotAllowed = (allow: string) =>
  new GatewayError(405, "invalid_request_error", "method_not_allowed", `use ${allow}`);
const notFoundError = (what: string) => new GatewayError(404, "invalid_request_error", "not_found", what);

function isTokenIds(v: unknown): v is number[] {
  if (!Array.isArray(v)) return false;
  for (const x of v)
    if (typeof x !== "number" || !Number.isInteger(x) || x < 0 || x > 0xffffffff) return false;
  return true;
}

export function createAdminHandler(deps: AdminDeps): AdminHandler {
  const { index, registry } = deps;
  const manager = deps.manager ?? deps.subscribers ?? null;
  const tokenizers = deps.tokenizers ?? deps.tokenizer;
  const log = deps.log ?? silentLogger();
  const maxBody = deps.maxBodyBytes ?? 8 * 1024 * 1024;
  const defaultBlockSize = deps.defaultBlockSize ?? DEFAULT_BLOCK_SIZE;

  // the sync backend counts a stream's entries without listing them
  const counting = index as PrefixIndex & { streamEntryCount?: (id: string) => number };
  const entryCount = (id: string): number =>
    typeof counting.streamEntryCount === "function"
      ? counting.streamEntryCount(id)
      : index.streamBlocks(id).length;

  const podList = (): PodInfo[] => {
    const p = deps.pods;
    if (typeof p === "function") return p();
    if (p) return p.pods();
    const m = manager as (SubscriberManagerLike & { pods?: () => PodInfo[] }) | null;
    if (m && typeof m.pods === "function") return m.pods();
    // derive what we can from the streams
    const seen = new Map<string, PodInfo>();
    for (const s of manager?.statuses() ?? []) {
      if (!seen.has(s.pod)) {
        seen.set(s.pod, {
          name: s.pod,
          model: s.model,
          loras: [],
          http: "",
          events: null,
          replay: null,
          dataParallelSize: 1,
          ready: true,
        });
      }
    }
    return [...seen.values()];
  };

  /** One row of /admin/pods: a pod's stream, or the pod alone (`s` null) when it has none. */
  const podEntry = (
    p: PodInfo,
    s: StreamStatus | null,
    h = deps.health?.(p.name) ?? null,
  ): AdminPodEntry => ({
    name: p.name,
    rank: s ? s.rank : null,
    stream: s ? s.streamId : null,
    model: p.model,
    lora: [...p.loras],
    ready: p.ready,
    healthy: h?.healthy ?? null,
    healthReason: h?.reason ?? null,
    state: s ? s.state : null,
    lastSeq: s ? s.lastSeq : null,
    eventsApplied: s ? s.eventsApplied : 0,
    blocks: s ? entryCount(s.streamId) : 0,
    decodeErrors: s ? s.decodeErrors : 0,
    gaps: s ? s.gaps : 0,
    replays: s ? s.replays : 0,
    resyncs: s ? s.resyncs : 0,
    restarts: s ? (s.restarts ?? 0) : 0,
    blockSize: s?.blockSize ?? null,
    declaredBlockSize: p.blockSize ?? null,
    warnings: warningsOf(p, s),
    lagSeconds: s?.lagSeconds ?? null,
    ...trustOf(s),
  });

  /** routing's trust in a stream's claims: 1 until the feedback has evidence, null without a gateway */
  const trustOf = (s: StreamStatus | null): Pick<AdminPodEntry, "trust" | "suspect"> => {
    if (s === null || deps.streamTrust === undefined) return { trust: s?.trust ?? null, suspect: false };
    const t = deps.streamTrust.stream(s.streamId);
    return { trust: t === null ? 1 : Math.round(t.trust * 1000) / 1000, suspect: t?.suspect ?? false };
  };

  const warningsOf = (p: PodInfo, s: StreamStatus | null): AdminWarning[] => {
    const out: AdminWarning[] = [];
    const layout = manager?.layoutError?.(p.name) ?? null;
    if (layout !== null) out.push({ code: "layout_refused", message: layout });
    if (s === null) return out;
    if (s.wrongRankBatches)
      out.push({
        code: "wrong_rank",
        message: `${s.wrongRankBatches} batches of another data-parallel rank refused: the pod's port layout does not match the engine's`,
      });
    if (s.blockSizeMismatch)
      out.push({
        code: "block_size_mismatch",
        message: `the pod declares block size ${p.blockSize} but its events carry ${s.blockSize}: matching uses ${s.blockSize}`,
      });
    for (const w of deps.streamWarnings?.(s.streamId) ?? []) out.push(w);
    return out;
  };

  const podsBody = (): AdminPodEntry[] => {
    const statuses = manager?.statuses() ?? [];
    const byPod = new Map<string, StreamStatus[]>();
    for (const s of statuses) {
      const l = byPod.get(s.pod);
      if (l) l.push(s);
      else byPod.set(s.pod, [s]);
    }
    const out: AdminPodEntry[] = [];
    const pods = podList().sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const p of pods) {
      const streams = byPod.get(p.name) ?? [];
      if (streams.length === 0) out.push(podEntry(p, null));
      for (const s of streams.sort((a, b) => (a.rank ?? -1) - (b.rank ?? -1))) out.push(podEntry(p, s));
    }
    return out;
  };

  const blocksBody = (
    name: string,
    url: URL,
  ): {
    blocks: Array<{ hash: string; tiers: string[]; rank?: number }>;
    groups?: Array<{ group: number; kind: string; window: number; hashes: string[]; rank?: number }>;
  } => {
    const pod = podList().find((p) => p.name === name);
    const statuses = (manager?.statuses() ?? []).filter((s) => s.pod === name);
    if (!pod && statuses.length === 0) throw notFoundError(`no pod named ${JSON.stringify(name)}`);
    const rankParam = url.searchParams.get("rank");
    // a known pod's streams by the one pod → streams rule; a pod discovery no longer lists, by
    // the streams the manager still reports for it
    const all: readonly PodStream[] = pod
      ? podStreamIds(pod)
      : statuses
          .map((s) => ({ streamId: s.streamId, rank: s.rank }))
          .sort((a, b) => (a.rank ?? -1) - (b.rank ?? -1));
    let streams: readonly PodStream[] = all;
    if (rankParam !== null) {
      const r = Number(rankParam);
      if (!Number.isInteger(r) || r < 0)
        throw badRequest("invalid_rank", `rank must be a non-negative integer`, "rank");
      // a single-rank pod's one stream (rank null) is its rank 0
      const s = all.find((s) => (s.rank ?? 0) === r);
      if (s === undefined) throw notFoundError(`pod ${JSON.stringify(name)} has no rank ${r}`);
      streams = [s];
    }
    const blocks: Array<{ hash: string; tiers: string[]; rank?: number }> = [];
    for (const s of streams) {
      for (const c of index.streamBlocks(s.streamId)) {
        const b: { hash: string; tiers: string[]; rank?: number } = {
          hash: hashToText(c.hash),
          tiers: [...c.tiers],
        };
        if (rankParam === null && s.rank !== null) b.rank = s.rank;
        blocks.push(b);
      }
    }
    blocks.sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : (a.rank ?? 0) - (b.rank ?? 0)));
    // a hybrid model's other KV-cache groups (src/index/groups.ts)
    const groups = streams.flatMap((s) =>
      (index.streamGroups?.(s.streamId) ?? []).map((g) => ({
        ...g,
        hashes: g.hashes.map(hashToText).sort(),
        ...(rankParam === null && s.rank !== null ? { rank: s.rank } : {}),
      })),
    );
    return groups.length === 0 ? { blocks } : { blocks, groups };
  };

  const tokenize = async (model: string, prompt: string): Promise<number[]> => {
    if (!tokenizers)
      throw badRequest("no_tokenizer", '"prompt" needs a tokenizer; send "token_ids"', "prompt");
    const baseUrl = podList().find((p) => p.model === model && p.http)?.http;
    let tok: Tokenizer | null;
    try {
      tok = await tokenizers(model, baseUrl);
    } catch (err) {
      throw badRequest(
        "no_tokenizer",
        `no tokenizer for model ${JSON.stringify(model)}: ${(err as Error).message}`,
        "model",
      );
    }
    if (!tok) throw badRequest("no_tokenizer", `no tokenizer for model ${JSON.stringify(model)}`, "model");
    return tok.encodePrompt(prompt);
  };

  const matchBody = async (body: unknown) => {
    if (typeof body !== "object" || body === null || Array.isArray(body))
      throw badRequest("invalid_body", "request body must be a JSON object");
    const b = body as Record<string, unknown>;
    if (typeof b.model !== "string" || b.model === "")
      throw badRequest("invalid_model", '"model" must be a non-empty string', "model");
    const lora = b.lora ?? null;
    if (lora !== null && typeof lora !== "string")
      throw badRequest("invalid_lora", '"lora" must be a string or null', "lora");
    // without "block_size", each stream of the model is matched in its own size: what its
    // events carry, else what its pod declares, else the default
    const sizes = new Map<string, number>();
    let blockSize = defaultBlockSize;
    if (b.block_size !== undefined) {
      if (typeof b.block_size !== "number" || !Number.isInteger(b.block_size) || b.block_size < 1)
        throw badRequest("invalid_block_size", '"block_size" must be a positive integer', "block_size");
      blockSize = b.block_size;
    } else {
      const declared = new Map(podList().map((p) => [p.name, p.blockSize]));
      for (const s of manager?.statuses() ?? []) {
        if (s.model !== b.model) continue;
        sizes.set(s.streamId, s.blockSize ?? declared.get(s.pod) ?? defaultBlockSize);
      }
      const withSize = podList().find((p) => p.model === b.model && p.blockSize !== undefined);
      blockSize = sizes.values().next().value ?? withSize?.blockSize ?? defaultBlockSize;
    }
    let tokens: number[];
    if (b.token_ids !== undefined) {
      if (!isTokenIds(b.token_ids))
        throw badRequest(
          "invalid_token_ids",
          '"token_ids" must be an array of non-negative integers',
          "token_ids",
        );
      tokens = b.token_ids;
    } else if (typeof b.prompt === "string") {
      tokens = await tokenize(b.model, b.prompt);
    } else {
      throw badRequest(
        "missing_input",
        'send "token_ids" (array of integers) or "prompt" (string)',
        "token_ids",
      );
    }
    const salt = typeof b.cache_salt === "string" && b.cache_salt !== "" ? b.cache_salt : null;
    const ns = { model: b.model, lora: lora as string | null, salt };
    const matches: Array<StreamMatch & { blockSize: number }> = [];
    for (const bs of new Set([blockSize, ...sizes.values()])) {
      for (const m of index.match({ ...ns, blockSize: bs }, tokens)) {
        if (sizes.size === 0 || (sizes.get(m.streamId) ?? blockSize) === bs)
          matches.push({ ...m, blockSize: bs });
      }
    }
    const pods = matches
      .map((m) => ({
        pod: m.pod,
        rank: m.rank,
        stream: m.streamId,
        blockSize: m.blockSize,
        matchedBlocks: m.matchedBlocks,
        matchedTokens: m.matchedBlocks * m.blockSize,
        tiers: { GPU: m.tiers.GPU, CPU: m.tiers.CPU, STORAGE: m.tiers.STORAGE },
      }))
      .sort(
        (x, y) =>
          y.matchedBlocks - x.matchedBlocks || (x.stream < y.stream ? -1 : x.stream > y.stream ? 1 : 0),
      );
    return { blockSize, tokens: tokens.length, pods };
  };

  const get =
    (fn: AdminRouteHandler): AdminRouteHandler =>
    (req, res, url) => {
      if (req.method !== "GET" && req.method !== "HEAD") throw methodNotAllowed("GET");
      return fn(req, res, url);
    };
  // `/admin/pods/<name>/blocks`: the name is one path segment or more ("<namespace>/<pod>")
  const blocks: AdminRouteHandler = (req, res, url) => {
    const path = url.pathname;
    if (!path.endsWith("/blocks")) throw notFoundError(`no route for ${req.method} ${path}`);
    if (req.method !== "GET" && req.method !== "HEAD") throw methodNotAllowed("GET");
    const raw = path.slice("/admin/pods/".length, -"/blocks".length);
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      throw badRequest("invalid_pod", "bad pod name encoding");
    }
    sendJson(res, 200, blocksBody(name, url));
  };
  // each path answers every method (405 for the wrong one); `route()` adds to `extra`, looked up first
  const builtin = FindMyWay();
  const extra = FindMyWay();
  const on = (path: string, fn: AdminRouteHandler) => builtin.on(ALL_METHODS, path, noop, fn);
  on(
    "/healthz",
    get((_req, res) => sendJson(res, 200, { status: "ok", ...deps.process?.() })),
  );
  on(
    "/readyz",
    get((_req, res) => {
      const r = deps.ready ? deps.ready() : true;
      const ok = typeof r === "boolean" ? r : r.ready;
      const detail = typeof r === "boolean" ? {} : { ...r, ready: undefined };
      sendJson(res, ok ? 200 : 503, { status: ok ? "ready" : "not ready", ...detail });
    }),
  );
  on(
    "/metrics",
    get(async (_req, res) => {
      const text = await registry.metrics();
      res.writeHead(200, { "content-type": registry.contentType, "content-length": Buffer.byteLength(text) });
      res.end(text);
    }),
  );
  on(
    "/admin/pods",
    get((_req, res) => sendJson(res, 200, podsBody())),
  );
  on("/admin/pods/*", blocks);
  const live = new LiveFeed(new FleetView(podsBody, index), deps.activity ?? null, registry, log, deps.live);
  on("/admin/live", live.handler);
  // a stream's state change reaches the dashboard at once, not at the next tick
  const emitter = manager as { on?: (e: "state", fn: () => void) => unknown } | null;
  if (typeof emitter?.on === "function") emitter.on("state", () => live.poke());
  deps.streamTrust?.onChange?.(() => live.poke());
  for (const [path, fn] of dashboardRoutes()) on(path, fn);
  on("/admin/index/match", async (req, res) => {
    if (req.method !== "POST") throw methodNotAllowed("POST");
    const raw = await readBody(req, maxBody);
    let body: unknown;
    try {
      body = JSON.parse(raw.toString("utf8"));
    } catch (err) {
      throw badRequest("invalid_json", `request body is not valid JSON: ${(err as Error).message}`);
    }
    sendJson(res, 200, await matchBody(body));
  });
  const find = (method: string, path: string): AdminRouteHandler | undefined => {
    const m = method as HTTPMethod;
    const fn = (extra.find(m, path)?.store ?? builtin.find(m, path)?.store) as AdminRouteHandler | undefined;
    // find-my-way finds no wildcard route for a broken percent-encoding: the blocks route answers it (400)
    return fn ?? (path.startsWith("/admin/pods/") ? blocks : undefined);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const url = new URL(req.url ?? "/", "http://admin.local");
    try {
      const fn = find(req.method ?? "GET", url.pathname);
      if (fn === undefined) return false;
      await fn(req, res, url);
      return true;
    } catch (err) {
      if (!(err instanceof GatewayError)) {
        log.error({ event: "admin.error", path: url.pathname, err: String(err) }, "admin request failed");
      }
      if (!req.readableEnded) req.resume();
      sendError(
        res,
        err instanceof GatewayError
          ? err
          : new GatewayError(500, "server_error", "internal_error", String(err)),
      );
      return true;
    }
  };

  const handler = (async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    if (await handle(req, res)) return;
    req.resume();
    sendError(
      res,
      notFoundError(`no route for ${req.method} ${new URL(req.url ?? "/", "http://x").pathname}`),
    );
  }) as AdminHandler;
  handler.handle = handle;
  handler.route = (method: string, path: string, fn: AdminRouteHandler): AdminHandler => {
    const m = method.toUpperCase() as HTTPMethod;
    if (extra.hasRoute(m, path)) extra.off(m, path);
    extra.on(m, path, noop, fn);
    return handler;
  };
  return handler;
}
