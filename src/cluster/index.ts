/**
 * Gateway replicas that route as one (`kvsync gateway --cluster nats://…`): shared load over
 * NATS (link.ts, remote-load.ts) and catch-up from a peer at start (snapshot.ts, catch-up.ts).
 * Each replica keeps its own index, fed by the engines directly.
 */
import type { Registry } from "prom-client";
import type { SubscriberManager } from "../events/manager.ts";
import type { PrefixIndex, StreamRef } from "../index/types.ts";
import type { LoadTracker } from "../routing/load.ts";
import type { Logger } from "../util/log.ts";
import { CatchUp } from "./catch-up.ts";
import { ClusterLink, type ClusterOptions, type ClusterStatus } from "./link.ts";
import { SNAPSHOT_DEFAULTS, type SnapshotOptions, SnapshotServer } from "./snapshot.ts";

export { CLUSTER_DEFAULTS, ClusterLink, type ClusterOptions, type ClusterStatus } from "./link.ts";
export { RemoteLoads } from "./remote-load.ts";
export { SNAPSHOT_DEFAULTS, type SnapshotOptions } from "./snapshot.ts";

export interface GatewayClusterOptions extends ClusterOptions {
  /** fetch a peer's index at start (default true) */
  catchUp?: boolean;
  /** longest wait for NATS before starting without a catch-up (ms) */
  catchUpConnectMs?: number;
  snapshot?: Partial<SnapshotOptions>;
}

export interface GatewayClusterDeps {
  loads: LoadTracker;
  index: PrefixIndex;
  subscribers: SubscriberManager | null;
  registry: Registry;
  log: Logger;
}

export class GatewayCluster {
  readonly link: ClusterLink;
  private readonly catchUpper: CatchUp;
  private readonly server: SnapshotServer;
  private readonly o: GatewayClusterOptions;

  constructor(
    opts: GatewayClusterOptions,
    private readonly d: GatewayClusterDeps,
  ) {
    this.o = opts;
    const log = d.log.child({ component: "cluster" });
    this.link = new ClusterLink(opts, d.loads, d.registry, log);
    d.loads.share(this.link.remote, this.link);
    const snap = { ...SNAPSHOT_DEFAULTS, ...opts.snapshot };
    this.catchUpper = new CatchUp(d.index, this.link, log, snap);
    const subs = d.subscribers;
    this.server = new SnapshotServer(
      this.link,
      {
        streams: () => {
          if (subs === null) return [];
          const out: StreamRef[] = [];
          for (const s of subs.statuses())
            if (s.state === "live")
              out.push({ streamId: s.streamId, pod: s.pod, rank: s.rank, model: s.model });
          return out;
        },
        // synchronous: the point and the entries are of the same instant
        take: (ref) => {
          const point = subs?.resumePoint(ref.streamId) ?? null;
          if (point === null) return null;
          const data = d.index.exportStream?.(ref.streamId) ?? null;
          return data === null ? null : { ref, point, data };
        },
      },
      this.link.metrics,
      log,
      snap,
    );
    this.link.start();
  }

  /** The subscriber manager's hook (see CatchUp.resumeOf). */
  readonly resumeOf = (ref: StreamRef) => this.catchUpper.resumeOf(ref);

  /** Before discovery starts: take a peer's index, if there is a peer. */
  async catchUp(): Promise<void> {
    if (this.o.catchUp === false || this.d.subscribers === null) return;
    await this.catchUpper.run(this.o.catchUpConnectMs ?? 1_000);
  }

  /** After the fleet started: answer the next replicas' catch-ups once there is something to give. */
  serveSnapshots(): void {
    if (this.d.subscribers !== null) this.server.start();
  }

  status(): ClusterStatus {
    return this.link.status();
  }

  async close(): Promise<void> {
    this.server.stop();
    this.catchUpper.close();
    this.d.loads.share(null, null);
    await this.link.close();
  }
}
