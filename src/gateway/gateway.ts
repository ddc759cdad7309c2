import { createServer, type Server } from "node:http";
import { Registry } from "prom-client";
import { createDiscoverySource, type DiscoveryOptions } from "../discovery/index.ts";
import { PodSet } from "../discovery/pod-set.ts";
import type { DiscoverySource, PodInfo } from "../discovery/types.ts";
import { SubscriberManager, type SubscriberManagerOptions } from "../events/manager.ts";
import type { StreamState } from "../events/types.ts";
import { createIndex, type SyncIndexOptions } from "../index/index.ts";
import type { PrefixIndex } from "../index/types.ts";
import { TokenizerRegistry } from "../tokenize/registry.ts";
import { createLogger, type Logger } from "../util/log.ts";
import { type ProcessWatchOptions, startProcessWatch } from "../util/process-watch.ts";
import { createAdminHandler } from "./admin.ts";
import { GatewayError, sendError } from "./errors.ts";
import {
  DEFAULT_BLOCK_SIZE,
  GATEWAY_DEFAULTS,
  GatewayCore,
  type GatewayCoreOptions,
  listen,
  type TokenizerLookup,
} from "./server.ts";

export interface StartGatewayOptions
  extends Omit<GatewayCoreOptions, "pods" | "index" | "streamState" | "tokenizer" | "registry" | "log"> {
  /** OpenAI API bind host (default 127.0.0.1) and port (default 0 = ephemeral) */
  host?: string;
  port?: number;
  /** admin API bind host (default 127.0.0.1) and port (default 0; null = no admin server) */
  adminHost?: string;
  adminPort?: number | null;
  /** Fleet: a fixed pod list, a discovery source, or discovery options (`--engines` / kubernetes). */
  pods?: PodInfo[];
  discovery?: DiscoverySource | DiscoveryOptions;
  /** shorthand for `discovery: { engines }` */
  engines?: string;
  /** the sync prefix index (default: createIndex(indexOptions)) */
  index?: PrefixIndex;
  indexOptions?: SyncIndexOptions;
  /** run KV-event subscribers for the pods (default true) */
  subscribe?: boolean;
  /** KV-event topic prefix to subscribe to ("" = all) */
  topic?: string;
  /** options for every subscriber (e.g. replayTimeoutMs) */
  subscriber?: SubscriberManagerOptions["subscriber"];
  /** event lag and clock skew thresholds of the streams */
  lag?: SubscriberManagerOptions["lag"];
  /** watch the process's event-loop delay and wall clock (the command turns it on) */
  processWatch?: ProcessWatchOptions | false;
  /**
   * Tokenizers: `--tokenizer` specs (the default model's bundled tokenizer is always included),
   * a TokenizerRegistry, a lookup function, or false (route by load only).
   */
  tokenizers?: string[] | TokenizerRegistry | TokenizerLookup | false;
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
  registry: Registry;
  close(): Promise<void>;
}

function hostForUrl(host: string): string {
  if (host === "0.0.0.0" || host === "::") return "127.0.0.1";
  return host.includes(":") ? `[${host}]` : host;
}

/**
 * Start the KV-aware gateway: discovery → PodSet → subscribers → index; the OpenAI API on
 * `port` and the admin API on `adminPort`. `close()` stops everything it started.
 */
export async function startGateway(opts: StartGatewayOptions = {}): Promise<RunningGateway> {
  const log = opts.log ?? createLogger("gateway");
  const registry = opts.registry ?? new Registry();
  const pods = new PodSet();
  const index = opts.index ?? createIndex(opts.indexOptions ?? {});
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
    if (opts.processWatch) {
      const pw = startProcessWatch(registry, log, opts.processWatch);
      cleanups.push(() => pw.stop());
    }
    // subscribers follow the pod set; only live streams' cache counts
    let subscribers: SubscriberManager | null = null;
    if (opts.subscribe ?? true) {
      const subs = new SubscriberManager({
        index,
        registry,
        log,
        topic: opts.topic,
        subscriber: opts.subscriber,
        lag: opts.lag,
      });
      subscribers = subs;
      cleanups.push(() => subs.close());
      const off = pods.onChange((all) => subs.setPods([...all.values()]));
      cleanups.push(off);
    }
    const streamState = (id: string): StreamState | undefined => subscribers?.status(id)?.state;

    let tokenizer: TokenizerLookup | undefined;
    const t = opts.tokenizers;
    if (typeof t === "function") tokenizer = t;
    else if (t !== false) {
      const reg =
        t instanceof TokenizerRegistry
          ? t
          : new TokenizerRegistry({
              specs: Array.isArray(t) ? t : [],
              pool: opts.tokenizerPool === false ? false : {},
            });
      if (!(t instanceof TokenizerRegistry)) cleanups.push(() => reg.close());
      tokenizer = (model, baseUrl) => (reg.has(model) ? reg.get(model, baseUrl ? { baseUrl } : {}) : null);
    }

    const core = new GatewayCore({
      ...opts,
      pods,
      index,
      streamState,
      tokenizer,
      registry,
      log,
    });
    cleanups.push(() => core.close());

    // fleet
    if (opts.pods) pods.apply({ type: "sync", pods: opts.pods });
    const d = opts.discovery ?? (opts.engines ? { engines: opts.engines } : undefined);
    let source: DiscoverySource | null = null;
    if (d !== undefined) {
      source =
        "start" in d && typeof d.start === "function"
          ? d
          : await createDiscoverySource({ ...(d as DiscoveryOptions), registry, logger: log });
      const src = source;
      await src.start(pods.handler);
      cleanups.push(() => src.stop());
    }

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
        ready: () => pods.routable().length > 0,
        defaultBlockSize: opts.defaultBlockSize ?? DEFAULT_BLOCK_SIZE,
        maxBodyBytes: opts.maxBodyBytes ?? GATEWAY_DEFAULTS.maxBodyBytes,
        log,
      }).route("POST", "/admin/route/explain", async (req, res) => {
        await core.handleAdmin(req, res);
      });
      const admin = createServer((req, res) => {
        admin_(req, res).catch((err: unknown) =>
          sendError(res, new GatewayError(500, "server_error", "internal_error", String(err))),
        );
      });
      const ah = opts.adminHost ?? "127.0.0.1";
      adminPort = await listen(admin, opts.adminPort ?? 0, ah);
      adminUrl = `http://${hostForUrl(ah)}:${adminPort}`;
      cleanups.push(() => closeServer(admin));
    }
    const url = `http://${hostForUrl(opts.host ?? "127.0.0.1")}:${port}`;
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

function closeServer(s: Server): Promise<void> {
  return new Promise((resolve) => {
    s.close(() => resolve());
    s.closeAllConnections();
  });
}
