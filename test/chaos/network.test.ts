import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Pod } from "../e2e/harness/cluster.ts";
import { scaled } from "../e2e/harness/wait.ts";
import { Bandwidth } from "./faults/bandwidth.ts";
import { netTarget } from "./faults/fault.ts";
import { PacketLoss } from "./faults/packet-loss.ts";
import { Partition } from "./faults/partition.ts";
import { RelayDelay, RelaySidecar, relayAnnotations } from "./faults/relay.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";

// Network chaos between the gateway and the engine pods: a partition, packet loss, delay and a
// bandwidth cap, each on one pod's link while the chat load flows through the gateway.
describe("chaos: network", { timeout: scaled(600_000) }, () => {
  // pod 0's traffic goes through a relay sidecar (the delay's injector; passthrough until then)
  let sidecar: RelaySidecar | null = null;
  const relay = () => {
    if (!sidecar) throw new Error("no relay sidecar");
    return sidecar;
  };
  const ctx = useChaos({
    podAnnotations: (k) => (k === 0 ? relayAnnotations() : undefined),
    afterPods: async (pods: Pod[]) => {
      const p = pods[0];
      sidecar = await RelaySidecar.start({ ns: p.node.ns, ip: p.ip, logDir: ctx.cluster().logDir });
    },
  });
  const judge = (r: ExperimentResult) =>
    assert.deepEqual(r.failures, [], `${r.id}: ${r.failures.join("\n")}`);
  const target = (k: number) => {
    const p = ctx.pods()[k];
    return { pod: p, net: netTarget(ctx.cluster().net, p.node, p.ip) };
  };

  it("setup: 4 engine pods, live streams, chat load ready", async () => {
    assert.equal((await ctx.setup()).length, 4);
  });

  it("partition: one engine pod cut off from the gateway both ways", async () => {
    const { pod, net } = target(1);
    judge(
      await runExperiment(ctx, {
        id: "network-partition",
        group: "network",
        title: "partition (nftables drop both ways on the pod's link)",
        fault: experimentFault(new Partition(net), [pod]),
        holdMs: scaled(10_000),
        targetMs: 2_000,
        events: [
          "subscriber.stalled",
          "subscriber.state[state=down|connecting]",
          "gateway.pod_unhealthy",
          "subscriber.reconnected",
          "gateway.pod_healthy",
        ],
        metrics: [
          "kvsync_subscriber_stalls_total",
          "kvsync_subscriber_reconnects_total",
          "kvsync_gateway_pod_ejections_total",
        ],
        unroutableAfterMs: 5_000,
      }),
    );
  });

  it("packet loss 50 %, correlation 25 %, on one pod's egress", async () => {
    const c = ctx.cluster();
    const { pod, net } = target(2);
    judge(
      await runExperiment(ctx, {
        id: "network-loss",
        group: "network",
        title: "packet loss 50 %, correlation 25 % (nftables Gilbert chain)",
        fault: experimentFault(new PacketLoss(net, { hostIp: c.net.hostIp, logDir: c.logDir }), [pod]),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        // TCP retransmits (200 ms and more each) make the pod's answers far slower than the
        // fleet's; its event stream's lag floor stays under --lag-warn-ms
        events: ["gateway.pod_slow"],
        metrics: ["kvsync_gateway_pod_slow_total"],
      }),
    );
  });

  it("delay 500 ms ± 100 ms on one pod (userspace relay: no netem here)", async () => {
    const pod = ctx.pods()[0];
    judge(
      await runExperiment(ctx, {
        id: "network-delay",
        group: "network",
        title: "delay 500 ms ± 100 ms (userspace TCP relay)",
        fault: experimentFault(new RelayDelay(relay()), [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: ["subscriber.lag_high", "gateway.pod_slow"],
        metrics: ["kvsync_subscriber_lag_high_total", "kvsync_gateway_pod_slow_total"],
      }),
    );
  });

  it("bandwidth 1 Mbit/s on one pod's link (tc tbf)", async () => {
    const c = ctx.cluster();
    const { pod, net } = target(3);
    judge(
      await runExperiment(ctx, {
        id: "network-bandwidth",
        group: "network",
        title: "bandwidth 1 Mbit/s (tc tbf on both ends of the veth)",
        fault: experimentFault(new Bandwidth(net, { logDir: c.logDir }), [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: [],
        metrics: [],
        watchOnly: ["gateway.pod_slow"],
        undetected:
          "this load's ~1.5 kB requests take 12 ms at 1 Mbit/s (tbf burst 10 kB), far under gateway.pod_slow's 100 ms excess: it fired in 3 of 4 runs, all at a load average above 20, where queueing on the slow link crosses it (watched, not required: it depends on the machine's speed)",
      }),
    );
  });
});
