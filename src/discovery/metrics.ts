import { Counter, Gauge, type Registry } from "prom-client";

/**
 * Discovery metrics, shared by the sources. Registered on the registry passed in (never the
 * global one); asking twice on the same registry returns the same metrics.
 */
export interface DiscoveryMetrics {
  /** 1 while the source cannot reach its backend (the last known set stays in use) */
  degraded: Gauge<"source">;
  /** pods the source currently reports */
  pods: Gauge<"source">;
  /** pods the source reports as routable */
  readyPods: Gauge<"source">;
  /** backend errors: list/watch failures, unreadable or invalid engines files */
  errors: Counter<"source" | "reason">;
  /** reloads of the engines file / relists of the API, by result */
  reloads: Counter<"source" | "result">;
  /** watch (re)starts */
  watches: Counter<"source">;
}

function getOrCreate<T>(registry: Registry, name: string, make: () => T): T {
  const existing = registry.getSingleMetric(name);
  return (existing as T | undefined) ?? make();
}

export function discoveryMetrics(registry: Registry): DiscoveryMetrics {
  const registers = [registry];
  return {
    degraded: getOrCreate(
      registry,
      "kvsync_discovery_degraded",
      () =>
        new Gauge({
          name: "kvsync_discovery_degraded",
          help: "1 while the discovery source cannot reach its backend; the last known pod set stays in use",
          labelNames: ["source"],
          registers,
        }),
    ),
    pods: getOrCreate(
      registry,
      "kvsync_discovery_pods",
      () =>
        new Gauge({
          name: "kvsync_discovery_pods",
          help: "Engine pods currently known to discovery",
          labelNames: ["source"],
          registers,
        }),
    ),
    readyPods: getOrCreate(
      registry,
      "kvsync_discovery_ready_pods",
      () =>
        new Gauge({
          name: "kvsync_discovery_ready_pods",
          help: "Engine pods currently routable (Ready with an address)",
          labelNames: ["source"],
          registers,
        }),
    ),
    errors: getOrCreate(
      registry,
      "kvsync_discovery_errors_total",
      () =>
        new Counter({
          name: "kvsync_discovery_errors_total",
          help: "Discovery backend errors (API list/watch failures, invalid or unreadable engines file)",
          labelNames: ["source", "reason"],
          registers,
        }),
    ),
    reloads: getOrCreate(
      registry,
      "kvsync_discovery_reloads_total",
      () =>
        new Counter({
          name: "kvsync_discovery_reloads_total",
          help: "Full reloads of the pod set (engines file reloads, API relists) by result",
          labelNames: ["source", "result"],
          registers,
        }),
    ),
    watches: getOrCreate(
      registry,
      "kvsync_discovery_watches_total",
      () =>
        new Counter({
          name: "kvsync_discovery_watches_total",
          help: "Watch streams started against the discovery backend",
          labelNames: ["source"],
          registers,
        }),
    ),
  };
}
