import { createServer, type Server } from "node:http";
import { Registry } from "prom-client";
import { createAdminHandler } from "../admin/admin.ts";
import { explainRoute } from "../admin/explain.ts";
import { GatewayCluster, type GatewayClusterOptions } from "../cluster/index.ts";
import type { PodSet } from "../discovery/pod-set.ts";
import { Fleet, type FleetOptions } from "../events/fleet.ts";
import type { SubscriberManager } from "../events/manager.ts";
import type { ReadinessOptions } from "../events/readiness.ts";
import type { PrefixIndex } from "../index/types.ts";
import { registryLookup, type TokenizerLookup } from "../tokenize/lookup.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { sendJson } from "../util/http-json.ts";
import { closeServer, httpUrl, listen } from "../util/http-server.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { type ProcessWatchOptions, startProcessWatch } from "../util/process-watch.ts";
import { GatewayError, sendError } from "./errors.ts";
import { DEFAULT_BLOCK_SIZE, GATEWAY_DEFAULTS, GatewayCore, type GatewayCoreOptions } from "./server.ts";

export interface StartGatewayOptions
  extends Omit<
      GatewayCoreOptions,
      "pods" | "index" | "streamState" | "streamBlockSize" | "streamStatus" | "tokenizer" | "registry" | "log"
    >,
    /** the fleet: a fixed pod list, a discovery source or its options, index, subscribers (fleet.ts) */
    Omit<FleetOptions, "registry" | "log" | "readiness"> {
  /** OpenAI API bind host (default 127.0.0.1) and port (default 0 = ephemeral) */
  host?: string;
  port?: number;
  /** admin API bind host (default 127.0.0.1) and port (default 0; null = no admin server) */
  adminHost?: string;
  adminPort?: number | null;
  /** shorthand for `discovery: { engines }` */
  engines?: string;
  /** watch the process's event-loop delay and wall clock (the command turns it on) */
  processWatch?: ProcessWatchOptions | false;
  /** when /readyz stops waiting for an event stream (readiness.ts) */
  readiness?: Pick<ReadinessOptions, "streamTimeoutMs">;
  /**
   * Tokenizers: `--tokenizer` specs (the default model's bundled tokenizer is always included),
   * a TokenizerRegistry, a lookup function, or false (route by load only).
   */
  tokenizers?: string[] | TokenizerRegistry | TokenizerLookup | false;
  /** share load with other replicas and catch up from them over NATS (default: none) */
  cluster?: GatewayClusterOptions;
  /** run local tokenizers in a worker pool (default true) */
  tokenizerPool?: boolean;
  registry?: Registry;
  log?: Logger;
}

export interface RunningGateway {
  /** http://host:port of the OpenAI API */
  url: string;
  /** http://host:port of the admin API, or null */
  adminUrl: string | null;
  port: number;
  adminPort: number | null;
  core: GatewayCore;
  pods: PodSet;
  index: PrefixIndex;
  subscribers: SubscriberManager | null;
  /** null without --cluster */
  cluster: GatewayCluster | null;
  registry: Registry;
  close(): Promise<void>;
}

/**
 * Start the KV-aware gateway: discovery → PodSet → subscribers → index; the OpenAI API on
 * `port` and the admin API on `adminPort`. `close()` stops everything it started.
 */
export async function startGateway(opts: StartGatewayOptions = {}): Promise<RunningGateway> {
  const log = opts.log ?? createLogger("gateway");
  const registry = opts.registry ?? new Registry();
  const cleanups: Array<() => Promise<void> | void> = [];
  const cleanup = async () => {
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (err) {
        log.warn({ event: "gateway.close_error", err: String(err) }, "error while closing");
      }
    }
  };
  try {
    // /healthz reports the loop delay either way; metrics and warnings only when asked for
    const pw = opts.processWatch
      ? startProcessWatch(registry, log, opts.processWatch)
      : startProcessWatch(null, log, { eventLoopWarnMs: 0, clockJumpWarnMs: 0 });
    cleanups.push(() => pw.stop());
    const fleet = new Fleet({
      pods: opts.pods,
      discovery: opts.discovery ?? (opts.engines ? { engines: opts.engines } : undefined),
      index: opts.index,
      indexOptions: opts.indexOptions,
      subscribe: opts.subscribe,
      topic: opts.topic,
      subscriber: opts.subscriber,
      lag: opts.lag,
      source: opts.source,
      resumeOf: opts.cluster ? (ref) => cluster?.resumeOf(ref) : undefined,
      readiness: { ...opts.readiness, requirePod: true },
      registry,
      log,
    });
    cleanups.push(() => fleet.close());
    const { pods, index, subscribers } = fleet;
    const tokenizers = gatewayTokenizers(opts.tokenizers, opts.tokenizerPool);
    cleanups.push(tokenizers.close);
    const tokenizer = tokenizers.lookup;
    const core = new GatewayCore({
      ...opts,
      pods,
      index,
      streamState: fleet.streamState,
      streamBlockSize: fleet.streamBlockSize,
      streamStatus: (id) => fleet.subscribers?.status(id),
      rebuildStream: (id) => fleet.subscribers?.rebuild(id, "prediction_suspect") ?? false,
      tokenizer,
      registry,
      log,
    });
    cleanups.push(() => core.close());
    let cluster: GatewayCluster | null = null;
    if (opts.cluster) {
      const c = new GatewayCluster(opts.cluster, { loads: core.loads, index, subscribers, registry, log });
      cluster = c;
      cleanups.push(() => c.close());
      // before discovery: each stream's subscriber then starts from the peer's point
      await c.catchUp();
    }
    await fleet.start();
    cluster?.serveSnapshots();

    const server: Server = createServer(core.handle);
    server.keepAliveTimeout = 65_000;
    const port = await listen(server, opts.port ?? 0, opts.host ?? "127.0.0.1");
    cleanups.push(() => closeServer(server));

    let adminPort: number | null = null;
    let adminUrl: string | null = null;
    if (opts.adminPort !== null) {
      // the shared admin API (healthz/readyz/metrics/admin/pods/blocks/match) + route explain
      const admin_ = createAdminHandler({
        index,
        pods,
        subscribers,
        registry,
        tokenizer,
        health: core.health === null ? undefined : (pod) => core.health?.status(pod) ?? null,
        streamWarnings: (id) => [...(core.matchWatch?.warnings(id) ?? []), ...core.feedback.warnings(id)],
        streamTrust: { stream: (id) => core.feedback.stream(id), onChange: (fn) => core.onTrustChange(fn) },
        ready: () => fleet.readiness.check(),
        process: () => ({ eventLoopDelayMs: pw.loopDelay() }),
        activity: core.activity,
        defaultBlockSize: opts.defaultBlockSize ?? DEFAULT_BLOCK_SIZE,
        maxBodyBytes: opts.maxBodyBytes ?? GATEWAY_DEFAULTS.maxBodyBytes,
        log,
      })
        .route(
          "POST",
          "/admin/route/explain",
          explainRoute(core.planner, opts.maxBodyBytes ?? GATEWAY_DEFAULTS.maxBodyBytes),
        )
        .route("GET", "/admin/cluster", (_req, res) => {
          // this replica's id, the NATS link state and the peers it hears, with their load
          if (cluster === null)
            throw new GatewayError(
              404,
              "invalid_request_error",
              "not_found",
              "this gateway runs without --cluster",
            );
          sendJson(res, 200, cluster.status());
        });
      const admin = createServer((req, res) => {
        admin_(req, res).catch((err: unknown) =>
          sendError(res, new GatewayError(500, "server_error", "internal_error", String(err))),
        );
      });
      const ah = opts.adminHost ?? "127.0.0.1";
      adminPort = await listen(admin, opts.adminPort ?? 0, ah);
      adminUrl = httpUrl(ah, adminPort);
      cleanups.push(() => closeServer(admin));
    }
    const url = httpUrl(opts.host ?? "127.0.0.1", port);
    log.info({ event: "gateway.started", url, adminUrl, policy: core.policy.name }, "gateway listening");
    let closing: Promise<void> | null = null;
    return {
      url,
      adminUrl,
      port,
      adminPort,
      core,
      pods,
      index,
      subscribers,
      cluster,
      registry,
      close: () => {
        closing ??= cleanup();
        return closing;
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/** The gateway's tokenizer lookup for its `tokenizers` option, and how to close what it opened. */
export function gatewayTokenizers(
  t: StartGatewayOptions["tokenizers"],
  pool = true,
): { lookup: TokenizerLookup | undefined; close: () => Promise<void> } {
  if (t === false) return { lookup: undefined, close: async () => undefined };
  if (typeof t === "function") return { lookup: t, close: async () => undefined };
  if (t instanceof TokenizerRegistry) return { lookup: registryLookup(t), close: async () => undefined };
  const reg = new TokenizerRegistry({ specs: t ?? [], pool: pool ? {} : false });
  return { lookup: registryLookup(reg), close: () => reg.close() };
}
