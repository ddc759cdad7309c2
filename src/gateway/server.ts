import { type IncomingMessage, METHODS, type ServerResponse } from "node:http";
import { performance } from "node:perf_hooks";
import FindMyWay, { type HTTPMethod, type HTTPVersion, type Instance as Router } from "find-my-way";
import { Registry } from "prom-client";
import type { PodSet } from "../discovery/pod-set.ts";
import { DEFAULT_BLOCK_SIZE, type PodInfo } from "../discovery/types.ts";
import { podStreamIds, type StreamState, type StreamStatus } from "../events/types.ts";
import type { PrefixIndex } from "../index/types.ts";
import { EngineMetricsScraper } from "../routing/engine-metrics.ts";
import { FEEDBACK_DEFAULTS, type FeedbackOptions, PredictionFeedback } from "../routing/feedback.ts";
import { createPolicy } from "../routing/index.ts";
import type { KvAwareOptions } from "../routing/kv-aware.ts";
import { LoadTracker } from "../routing/load.ts";
import type { PrefixApproxOptions } from "../routing/prefix-approx.ts";
import type { PolicyName, RoutingPolicy } from "../routing/types.ts";
import type { TokenizerLookup } from "../tokenize/lookup.ts";
import { sendJson } from "../util/http-json.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { RouteActivity } from "./activity.ts";
import { ResponseAffinity } from "./affinity.ts";
import { GatewayError, sendError } from "./errors.ts";
import { type HealthOptions, originOf, PodHealth } from "./health.ts";
import { MatchWatch, type MatchWatchOptions } from "./match-watch.ts";
import { GatewayMetrics } from "./metrics.ts";
import { type ExplainResult, Planner } from "./planner.ts";
import { PodPressure, type PressureOptions } from "./pod-pressure.ts";
import { type RequestCtx, RequestProxy } from "./proxy.ts";
import { type RequestKind, readBody } from "./request.ts";
import { API_ROUTES, parseRequest } from "./request-kinds.ts";
import { relayResponseOp } from "./response-ops.ts";
import { UpstreamPools } from "./upstream.ts";
import { UsageAccounting } from "./usage.ts";

export type { ExplainCandidate, ExplainResult } from "./planner.ts";
export { MAX_RESPONSE_BYTES } from "./proxy.ts";
export type { TokenizerLookup };
export { DEFAULT_BLOCK_SIZE };

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
  /**
   * drop a stream's entries and replay its engine's buffer from the oldest batch (the manager's
   * `rebuild`); asked when the prediction feedback marks the stream suspect
   */
  rebuildStream?: (streamId: string) => boolean;
  seed?: number;
  /** a stream's block size learned from its events (null: none seen yet) */
  streamBlockSize?: (streamId: string) => number | null;
  /** a stream's counters, for the never-matches watch's diagnosis */
  streamStatus?: (streamId: string) => StreamStatus | undefined;
  /** the never-matches watch (match-watch.ts); false = off */
  matchWatch?: Partial<MatchWatchOptions> | false;
  /** block size of a stream whose events have not said yet and whose pod declares none (tokens) */
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
  /** the pods' container pressure, from the scrapes (pod-pressure.ts); false = off */
  pressure?: Partial<PressureOptions> | false;
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

/**
 * The gateway's OpenAI API: the planner (candidates, tokens, decision), the proxy (dispatch,
 * relay, retries) and the usage accounting, built over one PodSet and index, and the HTTP
 * handler in front of them. `startGateway` (gateway.ts) wires it to discovery, subscribers and
 * the admin API; it is usable on its own with any PodSet/index.
 */
export class GatewayCore {
  readonly metrics: GatewayMetrics;
  readonly loads: LoadTracker;
  readonly policy: RoutingPolicy;
  readonly feedback: PredictionFeedback;
  readonly planner: Planner;
  /** recent decisions and per-second routing figures (the admin dashboard's live feed) */
  readonly activity = new RouteActivity();
  readonly log: Logger;
  /** null when health checks are off */
  readonly health: PodHealth | null;
  /** null when the never-matches watch is off */
  readonly matchWatch: MatchWatch | null;
  private readonly proxy: RequestProxy;
  private readonly pools: UpstreamPools;
  private readonly scraper: EngineMetricsScraper | null;
  private readonly pressure: PodPressure | null;
  private readonly maxBodyBytes: number;
  /** which pod stored which `/v1/responses` id (follow-ups, retrieve and cancel go there) */
  private readonly affinity = new ResponseAffinity();
  private readonly routes = this.routeTable();
  private readonly unsubscribe: () => void;
  private readonly trustListeners = new Set<(streamId: string) => void>();
  private closed = false;

  constructor(private readonly opts: GatewayCoreOptions) {
    const G = GATEWAY_DEFAULTS;
    this.log = opts.log ?? createLogger("gateway");
    this.metrics = new GatewayMetrics(opts.registry ?? new Registry());
    this.maxBodyBytes = opts.maxBodyBytes ?? G.maxBodyBytes;
    const headersTimeoutMs = opts.headersTimeoutMs ?? G.headersTimeoutMs;
    const pressure = opts.scrapeEngineMetrics && opts.pressure !== false ? opts.pressure : undefined;
    this.pressure = pressure === undefined ? null : new PodPressure(pressure, this.metrics, this.log);
    this.scraper = opts.scrapeEngineMetrics
      ? new EngineMetricsScraper({
          intervalMs: opts.scrapeIntervalMs ?? G.scrapeIntervalMs,
          timeoutMs: Math.min(1_000, opts.scrapeIntervalMs ?? G.scrapeIntervalMs),
          log: this.log,
          onScrape: (_pod, ok) => this.metrics.engineScrapes.inc({ result: ok ? "ok" : "error" }),
          onText: (pod, text) => this.pressure?.observe(pod, text),
        })
      : null;
    this.loads = new LoadTracker(this.scraper);
    this.feedback = new PredictionFeedback(
      this.log,
      { ...FEEDBACK_DEFAULTS, ...opts.feedback },
      {
        rebuild: opts.rebuildStream,
        changed: (id) => {
          for (const fn of this.trustListeners) fn(id);
        },
      },
    );
    this.policy = createPolicy(opts.policy ?? G.policy, {
      index: opts.index,
      loads: this.loads,
      kvAware: opts.kvAware,
      prefixApprox: opts.prefixApprox,
      seed: opts.seed,
      trust: this.feedback,
    });
    this.pools = new UpstreamPools(
      {
        connectTimeoutMs: opts.connectTimeoutMs ?? G.connectTimeoutMs,
        headersTimeoutMs,
        bodyTimeoutMs: opts.bodyTimeoutMs ?? G.bodyTimeoutMs,
      },
      opts.connectionsPerPod ?? G.connectionsPerPod,
    );
    this.metrics.sources = {
      streamInflight: () => this.loads.snapshot().map((x) => ({ stream: x.streamId, requests: x.requests })),
      predictionErrors: () => this.feedback.errors(),
      streamTrust: () => this.feedback.snapshot(),
    };
    this.health = opts.health === false ? null : new PodHealth(opts.health ?? {}, this.metrics, this.log);
    const health = this.health;
    if (health !== null) this.metrics.sources.podHealth = () => health.snapshot();
    const affinity = this.affinity;
    this.matchWatch =
      opts.matchWatch === false
        ? null
        : new MatchWatch(
            {
              index: opts.index,
              streamState: opts.streamState,
              streamStatus: opts.streamStatus,
              registry: this.metrics.registry,
              log: this.log,
            },
            opts.matchWatch ?? {},
          );
    this.planner = new Planner({
      affinity,
      pods: opts.pods,
      streamState: opts.streamState,
      policy: this.policy,
      loads: this.loads,
      health,
      tokenizer: opts.tokenizer,
      streamBlockSize: opts.streamBlockSize,
      defaultBlockSize: opts.defaultBlockSize ?? DEFAULT_BLOCK_SIZE,
      metrics: this.metrics,
      log: this.log,
    });
    this.proxy = new RequestProxy({
      pools: this.pools,
      loads: this.loads,
      policy: this.policy,
      health,
      usage: new UsageAccounting(
        this.feedback,
        this.metrics,
        this.policy.name,
        affinity,
        this.matchWatch,
        this.activity,
      ),
      activity: this.activity,
      metrics: this.metrics,
      log: this.log,
      headersTimeoutMs,
      firstByteTimeoutMs: opts.firstByteTimeoutMs ?? G.firstByteTimeoutMs,
    });
    this.unsubscribe = opts.pods.onChange((pods, changes) => {
      for (const c of changes) {
        if (c.type === "removed") {
          this.feedback.forget(c.name);
          for (const { streamId } of podStreamIds(c.previous)) {
            this.policy.forget?.(streamId);
            this.matchWatch?.forget(streamId);
          }
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

  /** Hear a stream turn suspect or trusted again (the admin feed's prompt update); returns the unsubscribe. */
  onTrustChange(fn: (streamId: string) => void): () => void {
    this.trustListeners.add(fn);
    return () => this.trustListeners.delete(fn);
  }

  private syncPods(pods: ReadonlyMap<string, PodInfo>): void {
    const origins = new Set<string>();
    for (const p of pods.values()) origins.add(originOf(p.http));
    this.pools.retain(origins);
    const ready = [...pods.values()].filter((p) => p.ready);
    this.scraper?.setPods(ready);
    this.health?.setPods(ready);
    this.pressure?.retain(new Set(ready.map((p) => p.name)));
  }

  /** node:http request listener for the OpenAI API port. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const ctx: RequestCtx = { model: "", pod: "", status: null, t0: performance.now() };
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

  private async serve(req: IncomingMessage, res: ServerResponse, ctx: RequestCtx): Promise<void> {
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q === -1 ? url : url.slice(0, q);
    const route = this.routes.find((req.method ?? "GET") as HTTPMethod, path);
    if (route === null) {
      req.resume();
      throw new GatewayError(404, "invalid_request_error", "not_found", `no route for ${req.method} ${path}`);
    }
    await (route.store as Route)(req, res, ctx, path);
  }

  /** The OpenAI API's routes (request-kinds.ts): POST only (405 otherwise); unknown paths 404. */
  private routeTable(): Router<HTTPVersion.V1> {
    const r = FindMyWay();
    const api =
      (kind: RequestKind): Route =>
      async (req, res, ctx, path) => {
        if (req.method !== "POST") {
          req.resume();
          res.setHeader("allow", "POST");
          throw new GatewayError(405, "invalid_request_error", "method_not_allowed", `use POST for ${path}`);
        }
        const buf = await readBody(req, this.maxBodyBytes);
        const { body, parsed } = await parseRequest(kind, buf, String(req.headers["content-type"] ?? ""));
        ctx.model = parsed.model;
        const plan = await this.planner.plan(parsed, true);
        this.activity.decided(plan);
        await this.proxy.dispatch(req, res, ctx, path, body, buf, plan);
      };
    const ok: Route = async (_req, res) => {
      res.writeHead(200).end();
    };
    const on = (method: HTTPMethod | HTTPMethod[], path: string, fn: Route) => r.on(method, path, noop, fn);
    for (const [path, kind] of API_ROUTES) on(ALL_METHODS, path, api(kind));
    const responseOp: Route = (req, res, ctx, path) =>
      relayResponseOp(
        {
          affinity: this.affinity,
          pods: this.opts.pods,
          pools: this.pools,
          maxBodyBytes: this.maxBodyBytes,
          log: this.log,
        },
        req,
        res,
        ctx,
        path,
      );
    on("GET", "/v1/responses/:id", responseOp);
    on("POST", "/v1/responses/:id/cancel", responseOp);
    on("GET", "/v1/models", async (_req, res) => sendJson(res, 200, this.models()));
    on("GET", "/health", ok);
    on("GET", "/healthz", ok);
    return r;
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

  /** `POST /admin/route/explain`: every candidate's match, load and score, and the choice. */
  explain(body: Record<string, unknown>, endpoint: string | null = null): Promise<ExplainResult> {
    return this.planner.explain(body, endpoint);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
    this.scraper?.stop();
    this.matchWatch?.close();
    this.policy.close?.();
    await this.health?.close();
    await this.pools.close();
  }
}

/** A route: the store of its find-my-way entry (find-my-way only finds it; `serve` calls it). */
type Route = (req: IncomingMessage, res: ServerResponse, ctx: RequestCtx, path: string) => Promise<void>;
const noop = () => undefined;
/** every method node:http parses, so a known path with another method gets its own answer */
const ALL_METHODS = METHODS as HTTPMethod[];
