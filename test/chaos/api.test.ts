import assert from "node:assert/strict";
import { describe, it } from "node:test";
import type { Pod } from "../e2e/harness/cluster.ts";
import { gatewayOf, waitPodSet } from "../e2e/harness/suite.ts";
import { scaled } from "../e2e/harness/wait.ts";
import { KubeApiDelay } from "./faults/kube-delay.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";

// The Kubernetes API server turns slow: every call and the start of every watch waits 2 s,
// while the chat load flows through the gateway whose discovery reads that API.
describe("chaos: api", { timeout: scaled(600_000) }, () => {
  const ctx = useChaos();
  const judge = (r: ExperimentResult) =>
    assert.deepEqual(r.failures, [], `${r.id}: ${r.failures.join("\n")}`);

  it("setup: 4 engine pods, live streams, chat load ready", async () => {
    assert.equal((await ctx.setup()).length, 4);
  });

  it("2 s delay on every Kubernetes API call, while the watch expires and a pod is added", async () => {
    const c = ctx.cluster();
    const delay = new KubeApiDelay(c.kube, 2_000);
    let added: Pod | null = null;
    // a watch already streaming is not slowed: the API server's compaction (410 Gone) makes the
    // gateway relist and re-watch through the delay, and a pod added meanwhile must reach it
    const fault = experimentFault(delay, [], {
      servesHttp: true,
      afterRemove: async () => {
        await waitPodSet(gatewayOf(c), c.list(), 30_000);
      },
    });
    const apply = fault.apply;
    fault.apply = async () => {
      await apply();
      assert.ok(c.kube.expireWatches() > 0, "the gateway has a watch open");
      added = await c.createPod("engine-4", { engine: { numGpuBlocks: 768 } });
    };
    judge(
      await runExperiment(ctx, {
        id: "api-delay-2s",
        group: "api",
        title: "2 s delay on every Kubernetes API call (the suite's API server); watch expired, a pod added",
        fault,
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: ["discovery.slow"],
        metrics: ["kvsync_discovery_slow_requests_total"],
      }),
    );
    assert.ok(added, "a pod was added during the delay");
  });
});
