import assert from "node:assert/strict";
import { describe, it } from "node:test";
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

  it("2 s delay on every Kubernetes API call", async () => {
    const c = ctx.cluster();
    judge(
      await runExperiment(ctx, {
        id: "api-delay-2s",
        group: "api",
        title: "2 s delay on every Kubernetes API call (the suite's API server)",
        fault: experimentFault(new KubeApiDelay(c.kube, 2_000), [], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: [],
        metrics: [],
      }),
    );
  });
});
