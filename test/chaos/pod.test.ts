import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { scaled } from "../e2e/harness/wait.ts";
import { Stress } from "./faults/stress.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import { podFailure, podKill } from "./harness/pod-faults.ts";
import type { ExperimentResult } from "./harness/results.ts";

// Pod chaos: an engine crashes and its container restarts (same or new address), half the
// engines freeze, and the machine's CPU, memory and IO come under stress.
describe("chaos: pod", { timeout: scaled(600_000) }, () => {
  // the gateway scrapes the engines' /metrics: their containers' pressure and OOM kills
  // (cAdvisor's figures, which the mock engine exports for itself) tell a starved pod
  const ctx = useChaos({ gatewayArgs: ["--scrape-engine-metrics"] });
  const judge = (r: ExperimentResult) =>
    assert.deepEqual(r.failures, [], `${r.id}: ${r.failures.join("\n")}`);

  it("setup: 4 engine pods, live streams, chat load ready", async () => {
    assert.equal((await ctx.setup()).length, 4);
  });

  it("pod kill, restarted at the same address (seq from 0, empty cache)", async () => {
    const victim = ctx.pods()[1];
    judge(
      await runExperiment(ctx, {
        id: "pod-kill-same-address",
        group: "pod",
        title: "pod kill (SIGKILL one engine; restarted in place)",
        fault: podKill(ctx.cluster(), victim),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        // the killed Pod turns not ready: discovery takes it out of rotation, not the health probes
        events: ["subscriber.disconnected", "subscriber.restart"],
        metrics: ["kvsync_subscriber_restarts_total"],
      }),
    );
  });

  it("pod kill, restarted at a new address (the Pod's IP changes)", async () => {
    const victim = ctx.pods()[2];
    judge(
      await runExperiment(ctx, {
        id: "pod-kill-new-address",
        group: "pod",
        title: "pod kill (SIGKILL one engine; restarted at a new address)",
        fault: podKill(ctx.cluster(), victim, { newAddress: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: ["subscriber.disconnected", "subscriber.stop", "subscriber.start"],
        metrics: [],
      }),
    );
  });

  it("pod failure: half the engines SIGSTOPped for the window, then SIGCONT", async () => {
    const pods = ctx.pods();
    judge(
      await runExperiment(ctx, {
        id: "pod-failure-50pct",
        group: "pod",
        title: "pod failure, 50 % of pods (SIGSTOP / SIGCONT)",
        fault: podFailure([pods[0], pods[3]]),
        holdMs: scaled(12_000),
        targetMs: 5_000,
        events: [
          "subscriber.stalled",
          "gateway.pod_unhealthy",
          "subscriber.reconnected",
          "gateway.pod_healthy",
        ],
        metrics: ["kvsync_subscriber_stalls_total", "kvsync_gateway_pod_ejections_total"],
        unroutableAfterMs: 5_000,
      }),
    );
  });

  it("CPU stress in an engine's pod (2 workers at 80 %, sharing the pod's 0.5 CPU limit)", async () => {
    const c = ctx.cluster();
    const pod = ctx.pods()[0];
    const stress = Stress.cpu({
      logDir: c.logDir,
      ns: pod.node.ns,
      timeoutSeconds: 90,
      // as StressChaos does: stress-ng inside the container's cgroup, under the pod's limit
      pod: { name: "engine-0", pid: () => pod.group.process.pid, cpus: 0.5 },
    });
    judge(
      await runExperiment(ctx, {
        id: "pod-cpu-stress",
        group: "pod",
        title: "CPU stress, 2 workers at 80 % in the pod's cgroup (stress-ng, 0.5 CPU limit)",
        fault: experimentFault(stress, [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        // the pod's tasks wait for CPU most of the time (PSI): gateway.pod_pressure. The engine
        // itself slows only to ~1.6 x the fleet on a loaded machine, under gateway.pod_slow's 3 x
        events: ["gateway.pod_pressure[resource=cpu]"],
        metrics: ['kvsync_gateway_pod_pressure_total{resource="cpu"}'],
        watchOnly: ["gateway.pod_slow"],
      }),
    );
  });

  it("memory stress in an engine's pod (512 MB, over the pod's 384 MB memory limit)", async () => {
    const c = ctx.cluster();
    const pod = ctx.pods()[0];
    const stress = Stress.memory({
      logDir: c.logDir,
      ns: pod.node.ns,
      timeoutSeconds: 90,
      // as StressChaos does: stress-ng inside the container's memory cgroup, under its limit.
      // The engine's memory from before the fault stays charged outside it (cgroup v1 moves no
      // charge), so the limit bounds the stress and what the engine allocates meanwhile
      pod: { name: "engine-0-mem", pid: () => pod.group.process.pid, memoryBytes: 384 * 1024 * 1024 },
    });
    judge(
      await runExperiment(ctx, {
        id: "pod-memory-stress",
        group: "pod",
        title: "memory stress, 512 MB in the pod's cgroup (stress-ng --vm, 384 MB limit)",
        fault: experimentFault(stress, [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        // without swap, overrunning the limit is OOM kills (stress-ng's worker, the likeliest
        // victim, is killed and restarted over and over), which the pod's metrics count
        events: ["gateway.pod_oom_kill"],
        metrics: ["kvsync_gateway_pod_oom_kills_total"],
        watchOnly: ["gateway.pod_pressure[resource=memory]"],
      }),
    );
  });
});
