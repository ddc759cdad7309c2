import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { scaled } from "../e2e/harness/wait.ts";
import { netTarget } from "./faults/fault.ts";
import { Partition } from "./faults/partition.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";

// Network chaos between the gateway and the engine pods: a partition, packet loss, delay and a
// bandwidth cap, each on one pod's link while the chat load flows through the gateway.
describe("chaos: network", { timeout: scaled(600_000) }, () => {
  const ctx = useChaos();
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
        events: ["subscriber.state[state=down|connecting]", "gateway.pod_unhealthy"],
        metrics: ["kvsync_gateway_pod_ejections_total"],
        unroutableAfterMs: 5_000,
      }),
    );
  });
});
