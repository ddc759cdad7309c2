import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, it } from "node:test";
import { scaled } from "../e2e/harness/wait.ts";
import { diskOf } from "./faults/cgroup.ts";
import type { Fault as Injector } from "./faults/fault.ts";
import { SlowPipe } from "./faults/slow-pipe.ts";
import { Stress } from "./faults/stress.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";
import { runDir } from "./harness/results.ts";

// IO stress (pod group): 100 ms delay on 50 % of IO, on the gateway's log, its only steady IO,
// and on one engine pod's volume IO (the pod's IO limited to 10 operations a second: each one
// past the rate waits ~100 ms). The gateway writes its log into a slow pipe from its start
// (passthrough until the fault), so this file has a gateway of its own; it scrapes the engines'
// /metrics, where the pod's IO stall (PSI) shows.
describe("chaos: pod IO", { timeout: scaled(300_000) }, () => {
  let pipe: SlowPipe | null = null;
  const ctx = useChaos({
    gatewayArgs: ["--scrape-engine-metrics"],
    gatewayOutput: async () => {
      const logFile = join(runDir(), `gateway-io-${process.pid}.log`);
      pipe = await SlowPipe.start({ logDir: runDir(), logFile });
      return { output: pipe.fd, logFile };
    },
  });
  const judge = (r: ExperimentResult) =>
    assert.deepEqual(r.failures, [], `${r.id}: ${r.failures.join("\n")}`);

  it("setup: 4 engine pods, live streams, chat load ready", async () => {
    assert.equal((await ctx.setup()).length, 4);
  });

  it("IO stress: 100 ms delay on 50 % of the gateway's log IO and on an engine pod's volume IO", async () => {
    if (!pipe) throw new Error("no slow pipe");
    const log = pipe;
    const c = ctx.cluster();
    const pod = ctx.pods()[0];
    const volume = mkdtempSync(join(runDir(), "pod-volume-"));
    const podIo = Stress.io({
      logDir: c.logDir,
      ns: pod.node.ns,
      timeoutSeconds: 90,
      dir: volume,
      // as IOChaos on the pod's volume: its IO waits; the mock engine has no disk IO of its
      // own, so a writer in the pod stands for the engine's volume IO
      pod: {
        name: "engine-0-io",
        pid: () => pod.group.process.pid,
        iops: { device: diskOf(volume), perSecond: 10 },
      },
    });
    const both: Injector<unknown> = {
      name: `${log.name} + ${podIo.name}`,
      get active() {
        return log.active || podIo.active;
      },
      async apply() {
        await log.apply();
        await podIo.apply();
      },
      async verify() {
        return { log: await log.verify(), pod: await podIo.verify() };
      },
      async remove() {
        await podIo.remove();
        await log.remove();
        rmSync(volume, { recursive: true, force: true });
      },
    };
    judge(
      await runExperiment(ctx, {
        id: "pod-io-stress",
        group: "pod",
        title:
          "IO stress, 100 ms on 50 % of IO (the gateway's log through a slow pipe; a pod's volume at 10 IO/s)",
        fault: experimentFault(both, [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        // the pod's tasks wait on IO most of the time (PSI): gateway.pod_pressure. The slowed log
        // alone has no signal: its ~1 line/s fits in what the slowed reader drains
        events: ["gateway.pod_pressure[resource=io]"],
        metrics: ['kvsync_gateway_pod_pressure_total{resource="io"}'],
      }),
    );
  });
});
