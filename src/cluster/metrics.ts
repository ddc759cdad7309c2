import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** The cluster link's metrics (`kvsync_cluster_*`). */
export class ClusterMetrics {
  readonly connected: Gauge;
  readonly outages: Counter<"cause">;
  readonly peers: Gauge;
  readonly remoteInflight: Gauge;
  readonly received: Counter<"type">;
  readonly published: Counter<"type">;
  readonly dropped: Counter<"reason">;
  readonly peerExpiries: Counter;
  readonly snapshotsServed: Counter<"result">;
  readonly snapshotBytes: Counter;
  readonly catchUp: Counter<"result">;
  readonly catchUpStreams: Counter<"result">;
  readonly catchUpSeconds: Histogram;
  readonly deltaDelaySeconds: Histogram;

  constructor(registry: Registry) {
    const reg = [registry];
    this.connected = new Gauge({
      name: "kvsync_cluster_connected",
      help: "1 while the NATS connection of the cluster link is up",
      registers: reg,
    });
    this.outages = new Counter({
      name: "kvsync_cluster_outages_total",
      help: "NATS connection losses (routing goes on with this replica's own load view meanwhile)",
      labelNames: ["cause"],
      registers: reg,
    });
    this.peers = new Gauge({
      name: "kvsync_cluster_peers",
      help: "other gateway replicas heard from within the peer timeout",
      registers: reg,
    });
    this.remoteInflight = new Gauge({
      name: "kvsync_cluster_remote_inflight_requests",
      help: "in-flight requests the other replicas have on the streams (sum)",
      registers: reg,
    });
    this.received = new Counter({
      name: "kvsync_cluster_messages_received_total",
      help: "load messages accepted, by type (hb, d, bye)",
      labelNames: ["type"],
      registers: reg,
    });
    this.published = new Counter({
      name: "kvsync_cluster_messages_published_total",
      help: "load messages published, by type",
      labelNames: ["type"],
      registers: reg,
    });
    this.dropped = new Counter({
      name: "kvsync_cluster_messages_dropped_total",
      help: "messages on the cluster subjects dropped: malformed, version, foreign, invalid, peer_cap, stream_cap, stale",
      labelNames: ["reason"],
      registers: reg,
    });
    this.peerExpiries = new Counter({
      name: "kvsync_cluster_peer_expiries_total",
      help: "peers dropped because their heartbeats stopped",
      registers: reg,
    });
    this.snapshotsServed = new Counter({
      name: "kvsync_cluster_snapshots_served_total",
      help: "index snapshots sent to starting peers, by result",
      labelNames: ["result"],
      registers: reg,
    });
    this.snapshotBytes = new Counter({
      name: "kvsync_cluster_snapshot_bytes_total",
      help: "bytes of index snapshot chunks sent to peers",
      registers: reg,
    });
    this.catchUp = new Counter({
      name: "kvsync_cluster_catchups_total",
      help: "catch-ups from a peer at start, by result (loaded, no_peer, failed, rejected)",
      labelNames: ["result"],
      registers: reg,
    });
    this.catchUpStreams = new Counter({
      name: "kvsync_cluster_catchup_streams_total",
      help: "streams of a peer's snapshot: loaded into the index, or expired unused",
      labelNames: ["result"],
      registers: reg,
    });
    this.catchUpSeconds = new Histogram({
      name: "kvsync_cluster_catchup_seconds",
      help: "time to fetch and decode a peer's snapshot",
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
      registers: reg,
    });
    this.deltaDelaySeconds = new Histogram({
      name: "kvsync_cluster_delta_delay_seconds",
      help: "a peer's load delta from its routing decision to this replica applying it (the two wall clocks' skew included)",
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1],
      registers: reg,
    });
  }
}
