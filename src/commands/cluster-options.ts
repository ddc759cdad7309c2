/**
 * The `kvsync gateway --cluster*` flags: replicas that share load and catch up from each other
 * over NATS (src/cluster/, docs/scale-out.md). Off unless `--cluster` names a server.
 */
import type { Command } from "commander";
import { CLUSTER_DEFAULTS } from "../cluster/index.ts";
import { flagOpt, opt, parseIntArg } from "../util/cli-options.ts";

export interface ClusterCliOptions {
  cluster?: string;
  clusterName: string;
  clusterHeartbeatMs: number;
  clusterPeerTimeoutMs: number;
  clusterCatchUp: boolean;
}

export function addClusterOptions(cmd: Command): Command {
  return cmd
    .addOption(
      opt(
        "--cluster <nats-url>",
        "share load with the other gateway replicas and catch up from them over NATS (nats://host:4222; off by default)",
        "KVSYNC_CLUSTER",
      ),
    )
    .addOption(
      opt(
        "--cluster-name <name>",
        "the replicas that route as one (NATS subjects kvsync.<name>.*)",
        "KVSYNC_CLUSTER_NAME",
        CLUSTER_DEFAULTS.name,
      ),
    )
    .addOption(
      opt(
        "--cluster-heartbeat-ms <n>",
        "period of this replica's heartbeat (its whole load)",
        "KVSYNC_CLUSTER_HEARTBEAT_MS",
        CLUSTER_DEFAULTS.heartbeatMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      opt(
        "--cluster-peer-timeout-ms <n>",
        "a replica silent for this long is gone, with its load",
        "KVSYNC_CLUSTER_PEER_TIMEOUT_MS",
        CLUSTER_DEFAULTS.peerTimeoutMs,
      ).argParser(parseIntArg),
    )
    .addOption(
      flagOpt(
        "--cluster-catch-up",
        "at start, load a live peer's index and resume each stream from its point",
        "KVSYNC_CLUSTER_CATCH_UP",
        true,
      ),
    );
}

/** The gateway's `cluster` option, absent when `--cluster` is not given. */
export function clusterOptionsFrom(o: ClusterCliOptions) {
  return o.cluster
    ? {
        cluster: {
          url: o.cluster,
          name: o.clusterName,
          heartbeatMs: o.clusterHeartbeatMs,
          peerTimeoutMs: o.clusterPeerTimeoutMs,
          catchUp: o.clusterCatchUp,
        },
      }
    : {};
}
