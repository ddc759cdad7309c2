import { existsSync } from "node:fs";
import { KubeConfig, type KubernetesListObject, ListWatch, type V1Pod } from "@kubernetes/client-node";
import type { Registry } from "prom-client";
import { createLogger, type Logger } from "../util/log.ts";
import { type ApiTiming, apiTiming } from "./api-timing.ts";
import { causeOf, InformerWatch, listPods } from "./kubernetes-api.ts";
import { DEFAULT_LABEL_SELECTOR, podFinished, podInfoFromPod } from "./kubernetes-pods.ts";
import { type DiscoveryMetrics, discoveryMetrics } from "./metrics.ts";
import { samePod } from "./pod-set.ts";
import type { DiscoveryEvent, DiscoverySource, PodInfo } from "./types.ts";

export interface KubernetesSourceOptions {
  /** namespaces to watch; empty/absent = all namespaces (one cluster-wide informer) */
  namespaces?: string[];
  /** default `model.aibrix.ai/kv-events-enabled=true` */
  labelSelector?: string;
  /** a kubeconfig file; default: in-cluster credentials when running in a pod, else loadFromDefault */
  kubeconfig?: string;
  /** a ready KubeConfig (tests, embedding); wins over `kubeconfig` */
  kubeConfig?: KubeConfig;
  /** full relist period (ms) on top of the watch; 0 = never. Default 5 min. */
  resyncMs?: number;
  /** a list call, or a watch's response headers, slower than this counts as an outage (ms). Default 10 s. */
  listTimeoutMs?: number;
  /** a watch silent for this long is restarted (ms). Default 60 s; bookmarks keep it alive. */
  watchIdleTimeoutMs?: number;
  /** server-side watch timeout sent as timeoutSeconds. Default 300 s. */
  watchTimeoutSeconds?: number;
  /** longest pause before restarting a watch that ended without error (ms). Default 1 s. */
  watchRestartMaxDelayMs?: number;
  /** reconnect backoff after an error (ms): min, max. Default 250 ms, 30 s. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** how long `start` waits for the first list before resolving degraded. Default 10 s. */
  startTimeoutMs?: number;
  /** a list, or a watch's response headers, slower than this is logged as `discovery.slow` (ms; 0 = off). Default 1 s. */
  slowRequestMs?: number;
  registry?: Registry;
  logger?: Logger;
}

/** Load credentials: given file, in-cluster service account, or $KUBECONFIG / ~/.kube/config. */
export function loadKubeConfig(path?: string): KubeConfig {
  const kc = new KubeConfig();
  if (path) kc.loadFromFile(path);
  else if (
    process.env.KUBERNETES_SERVICE_HOST &&
    existsSync("/var/run/secrets/kubernetes.io/serviceaccount/token") &&
    !process.env.KUBECONFIG
  ) {
    kc.loadFromCluster();
  } else kc.loadFromDefault();
  if (!kc.getCurrentCluster()) throw new Error("kubeconfig has no current cluster");
  return kc;
}

interface Scope {
  /** "" = all namespaces */
  namespace: string;
  path: string;
  informer: ListWatch<V1Pod> | null;
  gen: number;
  listed: boolean;
  failing: boolean;
  failures: number;
  retry: NodeJS.Timeout | null;
  lastError: string | null;
}

/**
 * `--discovery kubernetes`: engine pods from the Kubernetes API through client-node informers
 * (list, then watch with bookmarks; a 410 Gone relists; a periodic resync relists). One informer
 * for all namespaces or one per listed namespace. Every (re)list is reported as a `sync`; watch
 * events as `upsert`/`delete`. An outage (API unreachable, erroring or slower than the list
 * timeout) never empties the set: the last known pods stay, `degraded()` turns true, the outage
 * is logged (`discovery.outage`) and counted, and the informer is rebuilt with backoff.
 */
export class KubernetesSource implements DiscoverySource {
  readonly kind = "kubernetes";
  readonly labelSelector: string;
  private readonly kc: KubeConfig;
  private readonly scopes: Scope[];
  private readonly log: Logger;
  private readonly metrics: DiscoveryMetrics | null;
  private readonly timing: ApiTiming;
  private readonly opts: Required<
    Pick<
      KubernetesSourceOptions,
      | "resyncMs"
      | "listTimeoutMs"
      | "watchIdleTimeoutMs"
      | "watchTimeoutSeconds"
      | "watchRestartMaxDelayMs"
      | "backoffMinMs"
      | "backoffMaxMs"
      | "startTimeoutMs"
    >
  >;
  /** pod name → (scope namespace, info) */
  private readonly known = new Map<string, { scope: Scope; info: PodInfo }>();
  /** pods we warned about (bad spec), to warn once per resourceVersion */
  private readonly warned = new Map<string, string>();
  private onEvent: ((ev: DiscoveryEvent) => void) | null = null;
  private resyncTimer: NodeJS.Timeout | null = null;
  private stopped = true;
  private outageSince: number | null = null;
  private readonly listWaiters: Array<() => void> = [];
  private relists = 0;

  constructor(opts: KubernetesSourceOptions = {}) {
    this.kc = opts.kubeConfig ?? loadKubeConfig(opts.kubeconfig);
    this.labelSelector = opts.labelSelector ?? DEFAULT_LABEL_SELECTOR;
    this.log = opts.logger ?? createLogger("discovery");
    this.metrics = opts.registry ? discoveryMetrics(opts.registry) : null;
    this.timing = apiTiming(opts.registry ?? null, this.log, opts.slowRequestMs);
    this.opts = {
      resyncMs: opts.resyncMs ?? 300_000,
      listTimeoutMs: opts.listTimeoutMs ?? 10_000,
      watchIdleTimeoutMs: opts.watchIdleTimeoutMs ?? 60_000,
      watchTimeoutSeconds: opts.watchTimeoutSeconds ?? 300,
      watchRestartMaxDelayMs: opts.watchRestartMaxDelayMs ?? 1000,
      backoffMinMs: opts.backoffMinMs ?? 250,
      backoffMaxMs: opts.backoffMaxMs ?? 30_000,
      startTimeoutMs: opts.startTimeoutMs ?? 10_000,
    };
    const namespaces = [...new Set((opts.namespaces ?? []).map((n) => n.trim()).filter((n) => n !== ""))];
    const mk = (namespace: string, path: string): Scope => ({
      namespace,
      path,
      informer: null,
      gen: 0,
      listed: false,
      failing: false,
      failures: 0,
      retry: null,
      lastError: null,
    });
    this.scopes =
      namespaces.length === 0
        ? [mk("", "/api/v1/pods")]
        : namespaces.map((ns) => mk(ns, `/api/v1/namespaces/${encodeURIComponent(ns)}/pods`));
  }

  /** The API server this source talks to. */
  get server(): string {
    return this.kc.getCurrentCluster()?.server ?? "";
  }

  /** Successful full lists (initial, 410 relists, resyncs, recoveries). */
  get listCount(): number {
    return this.relists;
  }

  degraded(): boolean {
    return this.scopes.some((s) => s.failing || !s.listed);
  }

  /** The pods currently known, sorted by name. */
  pods(): PodInfo[] {
    return [...this.known.values()].map((k) => k.info).sort((a, b) => (a.name < b.name ? -1 : 1));
  }

  async start(onEvent: (ev: DiscoveryEvent) => void): Promise<void> {
    if (this.onEvent) throw new Error("KubernetesSource already started");
    this.onEvent = onEvent;
    this.stopped = false;
    this.updateGauges();
    for (const s of this.scopes) this.startScope(s);
    if (this.opts.resyncMs > 0) {
      this.resyncTimer = setInterval(() => this.resync(), this.opts.resyncMs);
      this.resyncTimer.unref();
    }
    const allListed = new Promise<void>((resolve) => {
      const check = () => {
        if (this.stopped || this.scopes.every((s) => s.listed)) resolve();
        else this.listWaiters.push(check);
      };
      check();
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<"timeout">((r) => {
      timer = setTimeout(() => r("timeout"), this.opts.startTimeoutMs);
    });
    const r = await Promise.race([allListed, timeout]);
    clearTimeout(timer);
    if (r === "timeout") {
      this.log.warn(
        { event: "discovery.start_degraded", server: this.server },
        "Kubernetes API not answering yet; starting with no pods and retrying",
      );
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    this.resyncTimer = null;
    await Promise.all(this.scopes.map((s) => this.stopScope(s)));
    this.onEvent = null;
    for (const w of this.listWaiters.splice(0)) w();
  }

  /** Relist every scope now (what the periodic resync does). */
  resync(): void {
    if (this.stopped) return;
    for (const s of this.scopes) {
      if (s.retry) continue; // a retry is already scheduled
      this.startScope(s); // stops the current informer first
    }
  }

  private async stopScope(s: Scope): Promise<void> {
    s.gen++;
    if (s.retry) clearTimeout(s.retry);
    s.retry = null;
    const inf = s.informer;
    s.informer = null;
    if (inf) await inf.stop();
  }

  private startScope(s: Scope): void {
    if (this.stopped) return;
    // never two informers for one scope (a resync and an error retry may race)
    if (s.retry) clearTimeout(s.retry);
    s.retry = null;
    if (s.informer) void s.informer.stop();
    s.informer = null;
    const gen = ++s.gen;
    const live = () => gen === s.gen && !this.stopped;
    const watch = new InformerWatch(
      this.kc,
      {
        timeoutSeconds: this.opts.watchTimeoutSeconds,
        connectTimeoutMs: this.opts.listTimeoutMs,
        idleTimeoutMs: this.opts.watchIdleTimeoutMs,
      },
      () => {
        if (live()) this.healthy(s, true);
      },
      live,
      this.timing,
    );
    const list = async (): Promise<KubernetesListObject<V1Pod>> => {
      const result = await listPods(
        this.kc,
        s.path,
        this.labelSelector,
        this.opts.listTimeoutMs,
        this.timing,
      );
      if (live()) this.applyList(s, result.items);
      return result;
    };
    // ListWatch doubles its pause between watches that saw no event (up to 30 s); cap it so a
    // change is never noticed late just because the fleet was quiet for a while
    const cap = this.opts.watchRestartMaxDelayMs;
    const inf = new ListWatch<V1Pod>(s.path, watch, list, false, this.labelSelector, undefined, {
      delayFn: (ms: number) => new Promise<void>((r) => setTimeout(r, Math.min(ms, cap)).unref()),
    });
    inf.on("add", (p) => live() && this.applyPod(s, p));
    inf.on("update", (p) => live() && this.applyPod(s, p));
    inf.on("delete", (p) => live() && this.removePod(s, p));
    inf.on("error", (err) => {
      if (live()) this.failed(s, err);
    });
    this.metrics?.watches.inc({ source: this.kind });
    s.informer = inf;
    inf.start().catch((err) => {
      if (live()) this.failed(s, err);
    });
  }

  private applyList(s: Scope, items: V1Pod[]): void {
    const next = new Map<string, PodInfo>();
    for (const p of items) {
      const info = this.convert(p);
      if (info) next.set(info.name, info);
    }
    for (const [name, k] of [...this.known]) {
      if (k.scope === s && !next.has(name)) this.known.delete(name);
    }
    for (const [name, info] of next) this.known.set(name, { scope: s, info });
    s.listed = true;
    this.relists++;
    this.metrics?.reloads.inc({ source: this.kind, result: "ok" });
    this.healthy(s, false);
    this.updateGauges();
    this.emit({ type: "sync", pods: this.pods() });
    this.log.debug({ event: "discovery.listed", path: s.path, pods: next.size }, "pods listed");
    for (const w of this.listWaiters.splice(0)) w();
  }

  private convert(p: V1Pod): PodInfo | null {
    const key = `${p.metadata?.namespace ?? "default"}/${p.metadata?.name ?? ""}`;
    if (podFinished(p) || !p.metadata?.name) return null;
    try {
      const info = podInfoFromPod(p, this.known.get(key)?.info);
      this.warned.delete(key);
      return info;
    } catch (err) {
      const rv = p.metadata?.resourceVersion ?? "";
      if (this.warned.get(key) !== rv) {
        if (this.warned.size > 10_000) this.warned.clear();
        this.warned.set(key, rv);
        this.metrics?.errors.inc({ source: this.kind, reason: "invalid_pod" });
        this.log.warn(
          { event: "discovery.pod_invalid", pod: key, err: (err as Error).message },
          `ignoring pod ${key}: ${(err as Error).message}`,
        );
      }
      return null;
    }
  }

  private applyPod(s: Scope, p: V1Pod): void {
    const key = `${p.metadata?.namespace ?? "default"}/${p.metadata?.name ?? ""}`;
    const info = this.convert(p);
    if (!info) {
      if (this.known.delete(key)) {
        this.updateGauges();
        this.emit({ type: "delete", name: key });
      }
      return;
    }
    const prev = this.known.get(key);
    this.known.set(key, { scope: s, info });
    if (prev && samePod(prev.info, info)) return; // e.g. the informer's ADD right after our list
    this.updateGauges();
    this.emit({ type: "upsert", pod: info });
  }

  private removePod(_s: Scope, p: V1Pod): void {
    const key = `${p.metadata?.namespace ?? "default"}/${p.metadata?.name ?? ""}`;
    this.warned.delete(key);
    if (this.known.delete(key)) {
      this.updateGauges();
      this.emit({ type: "delete", name: key });
    }
  }

  private emit(ev: DiscoveryEvent): void {
    if (this.stopped) return;
    try {
      this.onEvent?.(ev);
    } catch (err) {
      this.log.error({ event: "discovery.listener_error", err }, "discovery listener threw");
    }
  }

  /**
   * The scope's backend answered. The backoff resets only once a watch is established, so an
   * API server whose lists work but whose watches fail is not relisted in a tight loop.
   */
  private healthy(s: Scope, watching: boolean): void {
    if (watching) s.failures = 0;
    if (!s.failing) return;
    s.failing = false;
    s.lastError = null;
    if (!this.degraded()) {
      const seconds = this.outageSince === null ? 0 : (performance.now() - this.outageSince) / 1000;
      this.outageSince = null;
      this.log.info(
        { event: "discovery.recovered", server: this.server, outageSeconds: seconds },
        "Kubernetes API reachable again",
      );
    }
    this.updateGauges();
  }

  private failed(s: Scope, err: unknown): void {
    const e = err as { message?: string; statusCode?: number; code?: number | string; name?: string };
    const message = `${e?.message ?? String(err)}${causeOf(err)}`;
    const reason =
      e?.statusCode !== undefined
        ? `http_${e.statusCode}`
        : /longer than|timeout/i.test(message)
          ? "timeout"
          : "unreachable";
    this.metrics?.errors.inc({ source: this.kind, reason });
    const first = !s.failing;
    s.failing = true;
    s.lastError = message;
    s.failures++;
    if (this.outageSince === null) this.outageSince = performance.now();
    const delay = Math.min(
      this.opts.backoffMaxMs,
      this.opts.backoffMinMs * 2 ** Math.min(s.failures - 1, 20) * (0.8 + Math.random() * 0.4),
    );
    const log = {
      event: "discovery.outage",
      server: this.server,
      path: s.path,
      err: message,
      retryMs: delay,
    };
    const msg = `Kubernetes API error, keeping the last known ${this.known.size} pods: ${message}`;
    if (first) this.log.warn(log, msg);
    else this.log.debug(log, msg);
    this.updateGauges();
    // rebuild the informer after the backoff: a fresh list, reported as a sync
    void this.stopScope(s); // synchronous part: the informer is stopped, the generation moves on
    if (this.stopped) return;
    s.retry = setTimeout(() => {
      s.retry = null;
      this.startScope(s);
    }, delay);
  }

  /** Error text for the log and the `lastError` of a scope; for status pages. */
  errors(): Array<{ namespace: string; error: string }> {
    return this.scopes
      .filter((s) => s.lastError !== null)
      .map((s) => ({ namespace: s.namespace || "*", error: s.lastError as string }));
  }

  private updateGauges(): void {
    if (!this.metrics) return;
    this.metrics.degraded.set({ source: this.kind }, this.degraded() ? 1 : 0);
    this.metrics.pods.set({ source: this.kind }, this.known.size);
    let ready = 0;
    for (const k of this.known.values()) if (k.info.ready) ready++;
    this.metrics.readyPods.set({ source: this.kind }, ready);
  }
}
