import type { Registry } from "prom-client";
import { createDiscoverySource, type DiscoveryOptions } from "../discovery/index.ts";
import { PodSet } from "../discovery/pod-set.ts";
import type { DiscoverySource, PodInfo } from "../discovery/types.ts";
import { createIndex, type SyncIndexOptions } from "../index/index.ts";
import type { PrefixIndex } from "../index/types.ts";
import type { Logger } from "../util/log.ts";
import { SubscriberManager, type SubscriberManagerOptions } from "./manager.ts";
import { Readiness, type ReadinessOptions } from "./readiness.ts";
import type { StreamState } from "./types.ts";

export interface FleetOptions {
  /** a fixed pod list, applied at start */
  pods?: PodInfo[];
  /** a discovery source, or options for one (`engines` = the engines file; kubernetes) */
  discovery?: DiscoverySource | DiscoveryOptions;
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
  /** the streams' transport (default: ZeroMQ) */
  source?: SubscriberManagerOptions["source"];
  /** a resume point per stream whose entries a peer's snapshot already loaded (src/cluster/) */
  resumeOf?: SubscriberManagerOptions["resumeOf"];
  /** when /readyz stops waiting for a stream; whether it needs a routable pod */
  readiness?: ReadinessOptions;
  registry: Registry;
  log: Logger;
}

/**
 * The fleet as the services see it: discovery → pod set → one subscriber per engine stream →
 * the index. Built in two steps so a service can follow the pod set before the first pods
 * arrive: the constructor wires the pod set to the subscribers; `start()` starts discovery.
 */
export class Fleet {
  readonly pods = new PodSet();
  readonly index: PrefixIndex;
  /** null when subscribing is off */
  readonly subscribers: SubscriberManager | null;
  /** /readyz: discovery answered and every ready pod's stream live or given up (readiness.ts) */
  readonly readiness: Readiness;
  private source: DiscoverySource | null = null;
  private readonly offPods: () => void;
  private closing: Promise<void> | null = null;

  constructor(private readonly o: FleetOptions) {
    this.index = o.index ?? createIndex(o.indexOptions ?? {});
    const subs =
      (o.subscribe ?? true)
        ? new SubscriberManager({
            index: this.index,
            registry: o.registry,
            log: o.log,
            topic: o.topic,
            subscriber: o.subscriber,
            lag: o.lag,
            source: o.source,
            resumeOf: o.resumeOf,
          })
        : null;
    this.subscribers = subs;
    this.readiness = new Readiness(
      { pods: () => this.pods.pods(), statuses: () => subs?.statuses() ?? [] },
      o.log,
      o.readiness,
    );
    this.offPods =
      subs === null ? () => undefined : this.pods.onChange((all) => subs.setPods([...all.values()]));
  }

  /** State of an event stream; only `live` streams' cache counts for routing. */
  readonly streamState = (streamId: string): StreamState | undefined =>
    this.subscribers?.status(streamId)?.state;

  /** The block size a stream's events carry (null before its first BlockStored). */
  readonly streamBlockSize = (streamId: string): number | null =>
    this.subscribers?.blockSizeOf(streamId) ?? null;

  /** The discovery source's kind once started (null: a fixed pod list only). */
  get discoveryKind(): string | null {
    return this.source?.kind ?? null;
  }

  /** Apply the fixed pods, then start discovery (its first snapshot is applied when this resolves). */
  async start(): Promise<void> {
    if (this.o.pods) this.pods.apply({ type: "sync", pods: this.o.pods });
    const d = this.o.discovery;
    if (d === undefined) {
      this.readiness.discoveryAnswered();
      this.readiness.start();
      return;
    }
    const source =
      "start" in d && typeof d.start === "function"
        ? d
        : await createDiscoverySource({
            ...(d as DiscoveryOptions),
            registry: this.o.registry,
            logger: this.o.log,
          });
    this.source = source;
    await source.start(this.pods.handler);
    this.readiness.discoveryAnswered();
    this.readiness.start();
  }

  /** Stop discovery, then the subscribers. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.readiness.stop();
      await this.source?.stop();
      this.offPods();
      await this.subscribers?.close();
    })();
    return this.closing;
  }
}
