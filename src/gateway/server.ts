import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import { Registry } from "prom-client";
import type { Dispatcher } from "undici";
import type { PodSet } from "../discovery/pod-set.ts";
import type { PodInfo } from "../discovery/types.ts";
import { type StreamState, streamIdOf } from "../events/types.ts";
import type { NamespaceRef, PrefixIndex } from "../index/types.ts";
import { EngineMetricsScraper } from "../routing/engine-metrics.ts";
import { FEEDBACK_DEFAULTS, type FeedbackOptions, PredictionFeedback } from "../routing/feedback.ts";
import { createPolicy } from "../routing/index.ts";
import type { KvAwareOptions } from "../routing/kv-aware.ts";
import { type LoadTicket, LoadTracker } from "../routing/load.ts";
import type { PrefixApproxOptions } from "../routing/prefix-approx.ts";
import type {
  Candidate,
  PolicyName,
  RouteRequest,
  RoutingDecision,
  RoutingPolicy,
  ScoredCandidate,
} from "../routing/types.ts";
import { isTokenizerError } from "../tokenize/errors.ts";
import type { Tokenizer } from "../tokenize/types.ts";
import { sendJson } from "../util/http-json.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { DEFAULT_BLOCK_SIZE } from "./admin.ts";
import {
  GatewayError,
  noHealthyPod,
  noReadyPod,
  notFound,
  sendError,
  upstreamFailed,
  upstreamTimeout,
} from "./errors.ts";
import {
  type HealthOptions,
  originOf,
  PodHealth,
  type PodUnhealthyError,
  type TrackedRequest,
} from "./health.ts";
import { GatewayMetrics } from "./metrics.ts";
import { type ParsedRequest, parseJsonBody, readBody, validateExplain, validateRequest } from "./request.ts";
import { eventData, SseSplitter } from "./sse.ts";
import { classifyUpstreamError, isRetryableBeforeResponse, UpstreamPools } from "./upstream.ts";

export { DEFAULT_BLOCK_SIZE };
/** non-streaming responses are buffered (to read their usage): at most this much */
export const MAX_RESPONSE_BYTES = 256 * 1024 * 1024;

/** Tokenizer for a base model, or null when there is none (the request is then routed by load only). */
export type TokenizerLookup = (
  model: string,
  /** an engine serving the model (for `remote` tokenizers) */
  baseUrl?: string,
) => Promise<Tokenizer | null> | Tokenizer | null;

export interface GatewayCoreOptions {
  /** the pod set (fed by discovery); the gateway routes to its ready pods */
  pods: PodSet;
  /** the sync prefix index (kv-aware matches against it) */
  index: PrefixIndex;
  /** state of an event stream ("<pod>" or "<pod>#<rank>"); only `live` streams' cache counts */
  streamState: (streamId: string) => StreamState | undefined;
  tokenizer?: TokenizerLookup;
  policy?: PolicyName;
  kvAware?: Partial<KvAwareOptions>;
  prefixApprox?: Partial<PrefixApproxOptions>;
  feedback?: Partial<FeedbackOptions>;
  seed?: number;
  /** block size when a pod does not say (tokens) */
  defaultBlockSize?: number;
  connectTimeoutMs?: number;
  headersTimeoutMs?: number;
  /** streaming requests: request sent → response headers (ms); the engine answers them at once */
  firstByteTimeoutMs?: number;
  /** the per-pod health signal (probes + passive failures); false = every ready pod is in rotation */
  health?: Partial<HealthOptions> | false;
  bodyTimeoutMs?: number;
  maxBodyBytes?: number;
  /** max connections per pod */
  connectionsPerPod?: number;
  scrapeEngineMetrics?: boolean;
  scrapeIntervalMs?: number;
  registry?: Registry;
  log?: Logger;
}

export const GATEWAY_DEFAULTS = Object.freeze({
  policy: "kv-aware" as PolicyName,
  connectTimeoutMs: 2_000,
  headersTimeoutMs: 300_000,
  firstByteTimeoutMs: 30_000,
  bodyTimeoutMs: 300_000,
  maxBodyBytes: 16 * 1024 * 1024,
  connectionsPerPod: 256,
  scrapeIntervalMs: 1_000,
});

export interface ExplainCandidate {
  pod: string;
  rank: number | null;
  streamId: string;
  live: boolean;
  /** in rotation by the health signal (pods out of rotation are listed in `outOfRotation`) */
  healthy: boolean;
  matchedBlocks: number;
  matchedTokens: number;
  tiers: ScoredCandidate["tiers"];
  savedTokens: number;
  load: ScoredCandidate["load"];
  score: number;
  terms?: Record<string, number>;
  chosen: boolean;
}

export interface ExplainResult {
  model: string;
  lora: string | null;
  blockSize: number;
  policy: PolicyName;
  promptTokens: number;
  tokenized: boolean;
  choice: { pod: string; rank: number | null; streamId: string } | null;
  candidates: ExplainCandidate[];
  /** ready pods serving the model that the health signal keeps out of rotation */
  outOfRotation: Array<{ pod: string; reason: string | null; since: number }>;
}

interface Plan {
  parsed: ParsedRequest;
  route: RouteRequest;
  decision: RoutingDecision;
  tokenized: boolean;
  outOfRotation: PodInfo[];
  /** load claim on the top candidate, taken in the same tick as the decision (null for explain) */
  ticket: LoadTicket | null;
}

interface Ctx {
  model: string;
  pod: string;
  status: string | null;
  t0: number;
}

/**
 * The request-handling core of the gateway: validation, tokenization, routing, proxying,
 * feedback and metrics. `startGateway` (gateway.ts) wires it to discovery, subscribers and the
 * admin API; it is usable on its own with any PodSet/index.
 */
export class GatewayCore {
  readonly metrics: GatewayMetrics;
  readonly loads: LoadTracker;
  readonly policy: RoutingPolicy;
  readonly feedback: PredictionFeedback;
  readonly log: Logger;
  private readonly pools: UpstreamPools;
  private readonly scraper: EngineMetricsScraper | null;
  /** null when health checks are off */
  readonly health: PodHealth | null;
  private readonly o: Required<
    Pick<
      GatewayCoreOptions,
      | "connectTimeoutMs"
      | "headersTimeoutMs"
      | "firstByteTimeoutMs"
      | "bodyTimeoutMs"
      | "maxBodyBytes"
      | "connectionsPerPod"
      | "defaultBlockSize"
    >
  >;
  private readonly unsubscribe: () => void;
  private closed = false;

  constructor(private readonly opts: GatewayCoreOptions) {
    this.log = opts.log ?? createLogger("gateway");
    this.metrics = new GatewayMetrics(opts.registry ?? new Registry());
    this.o = {
      connectTimeoutMs: opts.connectTimeoutMs ?? GATEWAY_DEFAULTS.connectTimeoutMs,
      headersTimeoutMs: opts.headersTimeoutMs ?? GATEWAY_DEFAULTS.headersTimeoutMs,
      firstByteTimeoutMs: opts.firstByteTimeoutMs ?? GATEWAY_DEFAULTS.firstByteTimeoutMs,
      bodyTimeoutMs: opts.bodyTimeoutMs ?? GATEWAY_DEFAULTS.bodyTimeoutMs,
      maxBodyBytes: opts.maxBodyBytes ?? GATEWAY_DEFAULTS.maxBodyBytes,
      connectionsPerPod: opts.connectionsPerPod ?? GATEWAY_DEFAULTS.connectionsPerPod,
      defaultBlockSize: opts.defaultBlockSize ?? DEFAULT_BLOCK_SIZE,
    };
    this.scraper = opts.scrapeEngineMetrics
      ? new EngineMetricsScraper({
          intervalMs: opts.scrapeIntervalMs ?? GATEWAY_DEFAULTS.scrapeIntervalMs,
          timeoutMs: Math.min(1_000, opts.scrapeIntervalMs ?? GATEWAY_DEFAULTS.scrapeIntervalMs),
          log: this.log,
          onScrape: (_pod, ok) => this.metrics.engineScrapes.inc({ result: ok ? "ok" : "error" }),
        })
      : null;
    this.loads = new LoadTracker(this.scraper);
    this.policy = createPolicy(opts.policy ?? GATEWAY_DEFAULTS.policy, {
      index: opts.index,
      loads: this.loads,
      kvAware: opts.kvAware,
      prefixApprox: opts.prefixApprox,
      seed: opts.seed,
    });
    this.feedback = new PredictionFeedback(this.log, { ...FEEDBACK_DEFAULTS, ...opts.feedback });
    this.pools = new UpstreamPools(
      {
        connectTimeoutMs: this.o.connectTimeoutMs,
        headersTimeoutMs: this.o.headersTimeoutMs,
        bodyTimeoutMs: this.o.bodyTimeoutMs,
      },
      this.o.connectionsPerPod,
    );
    this.metrics.sources = {
      streamInflight: () => this.loads.snapshot().map((x) => ({ stream: x.streamId, requests: x.requests })),
      predictionErrors: () => this.feedback.errors(),
    };
    this.health = opts.health === false ? null : new PodHealth(opts.health ?? {}, this.metrics, this.log);
    const health = this.health;
    if (health !== null) this.metrics.sources.podHealth = () => health.snapshot();
    this.unsubscribe = opts.pods.onChange((pods, changes) => {
      for (const c of changes) {
        if (c.type === "removed") {
          this.feedback.forget(c.name);
          const prev = c.previous;
          for (const sid of streamIds(prev)) this.policy.forget?.(sid);
        }
      }
      this.syncPods(pods);
    });
    this.syncPods(new Map(opts.pods.pods().map((p) => [p.name, p])));
    this.scraper?.start();
    this.health?.start();
  }

  get pods(): PodSet {
    return this.opts.pods;
  }

  private syncPods(pods: ReadonlyMap<string, PodInfo>): void {
    const origins = new Set<string>();
    for (const p of pods.values()) origins.add(originOf(p.http));
    this.pools.retain(origins);
    const ready = [...pods.values()].filter((p) => p.ready);
    this.scraper?.setPods(ready);
    this.health?.setPods(ready);
  }

  /** node:http request listener for the OpenAI API port. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const ctx: Ctx = { model: "", pod: "", status: null, t0: performance.now() };
    this.metrics.inflight.inc();
    res.once("close", () => {
      this.metrics.inflight.dec();
      const status = ctx.status ?? (res.writableFinished ? String(res.statusCode) : "client_closed");
      this.metrics.requests.inc({ model: ctx.model, pod: ctx.pod, policy: this.policy.name, status });
      this.metrics.durationSeconds.observe({ policy: this.policy.name }, (performance.now() - ctx.t0) / 1000);
    });
    this.serve(req, res, ctx).catch((err: unknown) => {
      const ge =
        err instanceof GatewayError
          ? err
          : new GatewayError(
              500,
              "server_error",
              "internal_error",
              `internal error: ${(err as Error)?.message}`,
            );
      if (ge.status >= 500 && !(err instanceof GatewayError)) {
        this.log.error(
          { event: "gateway.internal_error", err: String(err), stack: (err as Error)?.stack },
          "internal error",
        );
      }
      // unknown names must not become label values (unbounded cardinality)
      if (ge.code === "model_not_found") ctx.model = "";
      if (ge.status === 499) {
        ctx.status = "client_closed";
        res.destroy();
        return;
      }
      sendError(res, ge, ge.status === 413 ? { connection: "close" } : {});
    });
  };

  private async serve(req: IncomingMessage, res: ServerResponse, ctx: Ctx): Promise<void> {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    if (path === "/v1/chat/completions" || path === "/v1/completions") {
      if (req.method !== "POST") {
        req.resume();
        res.setHeader("allow", "POST");
        throw new GatewayError(405, "invalid_request_error", "method_not_allowed", `use POST for ${path}`);
      }
      const kind = path === "/v1/completions" ? "completion" : "chat";
      const buf = await readBody(req, this.o.maxBodyBytes);
      const body = parseJsonBody(buf);
      const parsed = validateRequest(kind, body);
      ctx.model = parsed.model;
      const plan = await this.plan(parsed, true);
      await this.dispatch(req, res, ctx, path, body, buf, plan);
      return;
    }
    if (path === "/v1/models" && req.method === "GET") {
      sendJson(res, 200, this.models());
      return;
    }
    if ((path === "/health" || path === "/healthz") && req.method === "GET") {
      res.writeHead(200).end();
      return;
    }
    req.resume();
    throw new GatewayError(404, "invalid_request_error", "not_found", `no route for ${req.method} ${path}`);
  }

  /** `GET /v1/models`: base models and adapters of the discovered pods, OpenAI list shape. */
  models(): { object: "list"; data: Array<Record<string, unknown>> } {
    const seen = new Map<string, Record<string, unknown>>();
    for (const p of this.opts.pods.pods()) {
      if (!seen.has(p.model)) {
        seen.set(p.model, {
          id: p.model,
          object: "model",
          created: 0,
          owned_by: "kvsync",
          root: p.model,
          parent: null,
        });
      }
      for (const l of p.loras) {
        if (!seen.has(l)) {
          seen.set(l, { id: l, object: "model", created: 0, owned_by: "kvsync", root: l, parent: p.model });
        }
      }
    }
    return { object: "list", data: [...seen.values()] };
  }

  /** Which ready candidates serve the request's model (404 / 503 otherwise) and the namespace. */
  private candidatesFor(model: string): { ns: NamespaceRef; candidates: Candidate[]; out: PodInfo[] } {
    const all = this.opts.pods.pods();
    const serving = all.filter((p) => p.model === model || p.loras.includes(model));
    if (serving.length === 0) throw notFound(`The model \`${model}\` does not exist.`);
    const ready = serving.filter((p) => p.ready);
    if (ready.length === 0) throw noReadyPod(model);
    const first = ready[0]!;
    const isBase = first.model === model;
    const base = isBase ? model : first.model;
    const serves = ready.filter((p) =>
      isBase ? p.model === model : p.model === base && p.loras.includes(model),
    );
    // pods out of rotation get nothing while another pod can answer; none left is a quick 503
    const h = this.health;
    const pods = h === null ? serves : serves.filter((p) => h.isHealthy(p.name));
    const out = h === null ? [] : serves.filter((p) => !h.isHealthy(p.name));
    if (pods.length === 0) throw noHealthyPod(model, serves.length);
    const blockSize = first.blockSize ?? this.o.defaultBlockSize;
    const candidates: Candidate[] = [];
    for (const p of pods) {
      const dp = dpSize(p);
      for (let r = 0; r < dp; r++) {
        const streamId = streamIdOf(p.name, dp > 1 ? r : null);
        candidates.push({
          streamId,
          pod: p.name,
          rank: dp > 1 ? r : null,
          http: p.http,
          live: this.opts.streamState(streamId) === "live",
        });
      }
    }
    return { ns: { model: base, lora: isBase ? null : model, blockSize }, candidates, out };
  }

  private async tokenize(
    parsed: ParsedRequest,
    baseModel: string,
    baseUrl: string | undefined,
  ): Promise<number[] | null> {
    if (parsed.tokenIds !== null) return parsed.tokenIds;
    const lookup = this.opts.tokenizer;
    if (lookup === undefined) return null;
    const t0 = performance.now();
    try {
      const tok = await lookup(baseModel, baseUrl);
      if (tok === null) {
        this.metrics.tokenizeFailures.inc({ reason: "no_tokenizer" });
        return null;
      }
      const ids =
        parsed.kind === "chat"
          ? await tok.encodeChat(parsed.chat!)
          : await tok.encodePrompt(parsed.prompt ?? "", parsed.addSpecialTokens);
      this.metrics.tokenizeSeconds.observe({ kind: parsed.kind }, (performance.now() - t0) / 1000);
      return ids;
    } catch (err) {
      // the engine is the authority on what it accepts: route by load and let it answer
      const reason = isTokenizerError(err) ? err.code : "error";
      this.metrics.tokenizeFailures.inc({ reason });
      this.log.debug(
        { event: "gateway.tokenize_failed", model: baseModel, reason, err: String(err) },
        "tokenize failed",
      );
      return null;
    }
  }

  private async plan(parsed: ParsedRequest, claim: boolean): Promise<Plan> {
    // claim = a real request (dispatch follows); otherwise explain: a dry run
    const { ns, candidates } = this.candidatesFor(parsed.model);
    const ids = await this.tokenize(parsed, ns.model, candidates[0]?.http);
    // re-read candidates: readiness or stream states may have changed while tokenizing
    const fresh = this.candidatesFor(parsed.model);
    const route: RouteRequest = { ns: fresh.ns, tokenIds: ids ?? [], candidates: fresh.candidates };
    if (!claim) route.dryRun = true;
    const t0 = performance.now();
    const decision = this.policy.route(route);
    this.metrics.routingSeconds.observe({ policy: this.policy.name }, (performance.now() - t0) / 1000);
    // claim the load now, so a request routed right after this one already sees it
    const top = decision.ranked[0];
    const ticket =
      claim && top ? this.loads.begin(top.candidate.streamId, route.tokenIds.length - top.savedTokens) : null;
    return { parsed, route, decision, tokenized: ids !== null, outOfRotation: fresh.out, ticket };
  }

  /** `POST /admin/route/explain`: every candidate's match, load and score, and the choice. */
  async explain(body: Record<string, unknown>): Promise<ExplainResult> {
    // `lora` (as in /admin/index/match) names the adapter; requests address adapters by name
    const parsed = validateExplain(
      typeof body.lora === "string" && body.lora !== "" ? { ...body, model: body.lora } : body,
    );
    const plan = await this.plan(parsed, false);
    const top = plan.decision.ranked[0];
    return {
      model: parsed.model,
      lora: plan.route.ns.lora,
      blockSize: plan.route.ns.blockSize,
      policy: plan.decision.policy,
      promptTokens: plan.route.tokenIds.length,
      tokenized: plan.tokenized,
      choice: top
        ? { pod: top.candidate.pod, rank: top.candidate.rank, streamId: top.candidate.streamId }
        : null,
      candidates: plan.decision.ranked.map((s, i) => ({
        pod: s.candidate.pod,
        rank: s.candidate.rank,
        streamId: s.candidate.streamId,
        live: s.candidate.live,
        healthy: this.health?.isHealthy(s.candidate.pod) ?? true,
        matchedBlocks: s.matchedBlocks,
        matchedTokens: s.matchedTokens,
        tiers: s.tiers,
        savedTokens: s.savedTokens,
        load: s.load,
        score: s.score,
        terms: s.terms,
        chosen: i === 0,
      })),
      outOfRotation: plan.outOfRotation.map((p) => {
        const h = this.health?.status(p.name);
        return { pod: p.name, reason: h?.reason ?? null, since: h?.since ?? 0 };
      }),
    };
  }

  /** Admin-port handler for `POST /admin/route/explain`; returns false for other paths. */
  readonly handleAdmin = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const path = (req.url ?? "/").split("?")[0];
    if (path !== "/admin/route/explain") return false;
    try {
      if (req.method !== "POST") {
        req.resume();
        throw new GatewayError(405, "invalid_request_error", "method_not_allowed", "use POST");
      }
      const body = parseJsonBody(await readBody(req, this.o.maxBodyBytes));
      sendJson(res, 200, await this.explain(body));
    } catch (err) {
      if (err instanceof GatewayError) sendError(res, err);
      else sendError(res, new GatewayError(500, "server_error", "internal_error", String(err)));
    }
    return true;
  };

  private async dispatch(
    req: IncomingMessage,
    res: ServerResponse,
    ctx: Ctx,
    path: string,
    body: Record<string, unknown>,
    raw: Buffer,
    plan: Plan,
  ): Promise<void> {
    const { parsed, decision, route } = plan;
    const inject = parsed.stream && !parsed.includeUsage;
    const payload = inject
      ? Buffer.from(
          JSON.stringify({
            ...body,
            stream_options: { ...((body.stream_options as object | null) ?? {}), include_usage: true },
          }),
        )
      : raw;
    const ac = new AbortController();
    // the client may have gone while the request was tokenized and routed
    let clientGone = res.destroyed || req.socket?.destroyed === true;
    if (clientGone) {
      plan.ticket?.done();
      ctx.status = "client_closed";
      this.metrics.clientAborts.inc({ pod: "" });
      return;
    }
    res.once("close", () => {
      if (!res.writableFinished) {
        clientGone = true;
        ac.abort();
      }
    });
    req.once("close", () => {
      if (!req.complete) {
        clientGone = true;
        ac.abort();
      }
    });
    const promptTokens = route.tokenIds.length;
    const order = decision.ranked;
    let sc = order[0];
    for (let attempt = 0; attempt < 2 && sc !== undefined; attempt++) {
      const cand = sc.candidate;
      ctx.pod = cand.pod;
      const ticket =
        attempt === 0 && plan.ticket !== null
          ? plan.ticket
          : this.loads.begin(cand.streamId, promptTokens - sc.savedTokens);
      // the health signal can cut this attempt (its pod went out of rotation) apart from the client
      const tracked = this.health?.track(cand.pod, ac.signal) ?? null;
      // an attempt that sent the client nothing can go to the next healthy pod once
      const next = () => (attempt === 0 ? this.retryTarget(order, cand.pod) : undefined);
      let up: Dispatcher.ResponseData;
      try {
        const headers: Record<string, string> = {
          "content-type": "application/json",
          "content-length": String(payload.length),
        };
        const auth = req.headers.authorization;
        if (typeof auth === "string") headers.authorization = auth;
        const rid = req.headers["x-request-id"];
        if (typeof rid === "string") headers["x-request-id"] = rid;
        if (cand.rank !== null) headers["x-data-parallel-rank"] = String(cand.rank);
        up = await this.pools.get(originOf(cand.http)).request({
          path,
          method: "POST",
          headers,
          body: payload,
          signal: tracked?.signal ?? ac.signal,
          // a streaming engine answers headers at once: waiting longer means it is stuck
          headersTimeout: parsed.stream
            ? Math.min(this.o.firstByteTimeoutMs, this.o.headersTimeoutMs)
            : this.o.headersTimeoutMs,
        });
      } catch (err) {
        ticket.done();
        tracked?.release();
        const cut = tracked?.abortedBy ?? null;
        const kind = cut !== null ? "pod_unhealthy" : classifyUpstreamError(err);
        if (clientGone || kind === "aborted") {
          ctx.status = "client_closed";
          this.metrics.clientAborts.inc({ pod: cand.pod });
          res.destroy();
          return;
        }
        this.metrics.upstreamErrors.inc({ pod: cand.pod, kind });
        const firstByte = kind === "headers_timeout" && parsed.stream;
        if (firstByte) this.metrics.upstreamAborts.inc({ reason: "first_byte_timeout" });
        // a non-streaming request's long wait is generation time, not evidence against the pod
        if (kind === "connect" || kind === "reset" || firstByte)
          this.health?.requestFailed(cand.pod, firstByte ? "first_byte_timeout" : kind);
        const n = next();
        // not after a first-byte timeout: the client has already waited the whole budget once
        if (n !== undefined && (isRetryableBeforeResponse(err) || cut !== null)) {
          this.metrics.retries.inc({ reason: kind });
          this.log.warn(
            { event: "gateway.retry", pod: cand.pod, next: n.candidate.pod, kind, err: String(err) },
            "pod failed before any byte; retrying on the next-best pod",
          );
          sc = n;
          continue;
        }
        if (cut !== null) throw cutError(cut, "before answering");
        if (kind === "headers_timeout") throw upstreamTimeout(`pod ${cand.pod} did not answer in time`);
        throw upstreamFailed(`pod ${cand.pod} failed: ${(err as Error)?.message ?? String(err)}`);
      }
      this.health?.requestSucceeded(cand.pod);
      tracked?.touch();
      this.policy.onDispatched?.(route, sc);
      this.metrics.matchedRatio.observe(
        { policy: this.policy.name },
        promptTokens > 0 ? Math.min(1, sc.matchedTokens / promptTokens) : 0,
      );
      try {
        await this.relay(res, ctx, up, sc, plan, inject, () => clientGone, ticket, tracked);
      } catch (err) {
        const n = next();
        if (tracked?.abortedBy && !res.headersSent && n !== undefined) {
          this.metrics.retries.inc({ reason: "pod_unhealthy" });
          this.log.warn(
            { event: "gateway.retry", pod: cand.pod, next: n.candidate.pod, kind: "pod_unhealthy" },
            "pod went out of rotation before the response; retrying on the next-best pod",
          );
          sc = n;
          continue;
        }
        throw err;
      } finally {
        ticket.done();
        tracked?.release();
      }
      return;
    }
    throw noReadyPod(parsed.model);
  }

  /** The best-ranked candidate on another pod that is in rotation, for a retry. */
  private retryTarget(order: ScoredCandidate[], failedPod: string): ScoredCandidate | undefined {
    return order.find(
      (x) => x.candidate.pod !== failedPod && (this.health?.isHealthy(x.candidate.pod) ?? true),
    );
  }

  private async relay(
    res: ServerResponse,
    ctx: Ctx,
    up: Dispatcher.ResponseData,
    sc: ScoredCandidate,
    plan: Plan,
    injected: boolean,
    clientGone: () => boolean,
    ticket: { prefillDone(): void },
    tracked: TrackedRequest | null,
  ): Promise<void> {
    const pod = sc.candidate.pod;
    const ctype = String(up.headers["content-type"] ?? "application/json");
    const headers: Record<string, string> = {
      "content-type": ctype,
      "x-kvsync-pod": pod,
      "x-kvsync-matched-tokens": String(sc.matchedTokens),
      "x-kvsync-policy": this.policy.name,
    };
    if (sc.candidate.rank !== null) headers["x-kvsync-rank"] = String(sc.candidate.rank);
    const streaming = up.statusCode === 200 && ctype.includes("text/event-stream");
    if (!streaming) {
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        for await (const c of up.body) {
          tracked?.touch();
          if (size === 0) {
            ticket.prefillDone();
            this.metrics.firstByteSeconds.observe(
              { policy: this.policy.name },
              (performance.now() - ctx.t0) / 1000,
            );
          }
          chunks.push(c as Buffer);
          size += (c as Buffer).length;
          if (size > MAX_RESPONSE_BYTES) {
            up.body.destroy();
            this.metrics.upstreamErrors.inc({ pod, kind: "too_large" });
            throw upstreamFailed(`pod ${pod} sent a response larger than ${MAX_RESPONSE_BYTES} bytes`);
          }
        }
      } catch (err) {
        if (err instanceof GatewayError) throw err;
        if (clientGone()) {
          ctx.status = "client_closed";
          this.metrics.clientAborts.inc({ pod });
          return;
        }
        if (tracked?.abortedBy) {
          this.metrics.upstreamErrors.inc({ pod, kind: "pod_unhealthy" });
          throw cutError(tracked.abortedBy, "before finishing its response");
        }
        const kind = classifyUpstreamError(err);
        this.metrics.upstreamErrors.inc({ pod, kind });
        if (kind === "body_timeout") throw upstreamTimeout(`pod ${pod} stalled`);
        throw upstreamFailed(`pod ${pod} failed mid-response: ${(err as Error)?.message ?? String(err)}`);
      }
      const buf = Buffer.concat(chunks, size);
      if (up.statusCode === 200 && ctype.includes("json")) {
        try {
          this.observeUsage(pod, sc, plan, (JSON.parse(buf.toString("utf8")) as { usage?: unknown }).usage);
        } catch {
          // not JSON: nothing to learn
        }
      }
      headers["content-length"] = String(buf.length);
      if (clientGone()) return;
      res.writeHead(up.statusCode, headers);
      res.end(buf);
      return;
    }

    headers["cache-control"] = "no-cache";
    res.writeHead(200, headers);
    res.flushHeaders();
    const splitter = new SseSplitter();
    let first = true;
    try {
      for await (const c of up.body) {
        tracked?.touch();
        if (first) {
          first = false;
          ticket.prefillDone();
          this.metrics.firstByteSeconds.observe(
            { policy: this.policy.name },
            (performance.now() - ctx.t0) / 1000,
          );
        }
        let out = "";
        for (const ev of splitter.push(c as Buffer)) {
          if (this.inspectEvent(ev, pod, sc, plan, injected)) out += ev;
        }
        if (out.length > 0 && !(await write(res, out))) break;
      }
      const rest = splitter.end();
      if (rest.length > 0 && !clientGone()) await write(res, rest);
      if (!clientGone()) res.end();
      else {
        ctx.status = "client_closed";
        this.metrics.clientAborts.inc({ pod });
      }
    } catch (err) {
      if (clientGone()) {
        ctx.status = "client_closed";
        this.metrics.clientAborts.inc({ pod });
        return;
      }
      const cut = tracked?.abortedBy ?? null;
      const kind = cut !== null ? "pod_unhealthy" : classifyUpstreamError(err);
      this.metrics.upstreamErrors.inc({ pod, kind });
      this.metrics.streamErrors.inc({ pod, reason: kind });
      ctx.status = "stream_error";
      this.log.warn({ event: "gateway.stream_error", pod, kind, err: String(err) }, "pod failed mid-stream");
      const e =
        cut !== null
          ? cutError(cut, "mid-stream")
          : kind === "body_timeout"
            ? upstreamTimeout(`pod ${pod} stalled mid-stream`)
            : upstreamFailed(`pod ${pod} failed mid-stream: ${(err as Error)?.message ?? String(err)}`);
      // end the client's stream with an error event, then close: never leave it hanging
      res.end(`data: ${JSON.stringify(e.body())}\n\n`);
    }
  }

  /** Look at one SSE event; returns false to drop it (the usage chunk the gateway asked for). */
  private inspectEvent(ev: string, pod: string, sc: ScoredCandidate, plan: Plan, injected: boolean): boolean {
    // only the chunk carrying a usage object matters ("usage":null rides on every other chunk)
    if (!ev.includes('"usage":{') && !ev.includes('"usage": {')) return true;
    const data = eventData(ev);
    if (data === null || data === "[DONE]") return true;
    let obj: { usage?: unknown; choices?: unknown };
    try {
      obj = JSON.parse(data);
    } catch {
      return true;
    }
    if (obj.usage === null || typeof obj.usage !== "object") return true;
    const final = Array.isArray(obj.choices) && obj.choices.length === 0;
    if (final) this.observeUsage(pod, sc, plan, obj.usage);
    return !(injected && final);
  }

  private observeUsage(pod: string, sc: ScoredCandidate, plan: Plan, usage: unknown): void {
    if (usage === null || typeof usage !== "object") return;
    const u = usage as {
      prompt_tokens?: unknown;
      prompt_tokens_details?: { cached_tokens?: unknown } | null;
    };
    const cached = u.prompt_tokens_details?.cached_tokens;
    if (typeof cached !== "number" || !plan.tokenized) return;
    const promptTokens = typeof u.prompt_tokens === "number" ? u.prompt_tokens : plan.route.tokenIds.length;
    const err = this.feedback.observe(
      pod,
      sc.matchedTokens,
      cached,
      promptTokens,
      this.policy.name === "kv-aware",
    );
    this.metrics.predictionErrorTokens.observe({ policy: this.policy.name }, Math.abs(err));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    this.scraper?.stop();
    this.policy.close?.();
    await this.health?.close();
    await this.pools.close();
  }
}

function dpSize(p: PodInfo): number {
  return Math.max(1, Math.floor(p.dataParallelSize || 1));
}

/** A pod's event streams: "<pod>", or "<pod>#<rank>" per data-parallel rank. */
function streamIds(p: PodInfo): string[] {
  const dp = dpSize(p);
  return Array.from({ length: dp }, (_, r) => streamIdOf(p.name, dp > 1 ? r : null));
}

/** The client's error for a request cut because its pod went out of rotation. */
function cutError(cut: PodUnhealthyError, where: string): GatewayError {
  const m = `pod ${cut.pod} stopped answering ${where}: out of rotation (${cut.reason}), request aborted`;
  // a pod that stopped answering is a timeout; one that refuses or resets has failed
  return cut.reason.includes("timeout") ? upstreamTimeout(m) : upstreamFailed(m);
}

/** Write with backpressure; false when the client went away. */
async function write(res: ServerResponse, s: string): Promise<boolean> {
  if (res.destroyed || res.writableEnded) return false;
  if (res.write(s)) return true;
  const ac = new AbortController();
  try {
    await Promise.race([
      once(res, "drain", { signal: ac.signal }),
      once(res, "close", { signal: ac.signal }),
    ]);
  } catch {
    // aborted listener
  } finally {
    ac.abort();
  }
  return !res.destroyed && !res.writableEnded;
}
