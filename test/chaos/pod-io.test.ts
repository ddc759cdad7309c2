import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, it } from "node:test";
import { scaled } from "../e2e/harness/wait.ts";
import { SlowPipe } from "./faults/slow-pipe.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";
import { runDir } from "./harness/results.ts";

// IO stress (pod group): 100 ms delay on 50 % of IO, on the gateway's log, its only steady IO.
// The gateway writes its log into a slow pipe from its start (passthrough until the fault), so
// this file has a gateway of its own.
describe("chaos: pod IO", { timeout: scaled(300_000) }, () => {
  let pipe: SlowPipe | null = null;
  const ctx = useChaos({
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

  it("IO stress: 100 ms delay on 50 % of the gateway's log IO", async () => {
    if (!pipe) throw new Error("no slow pipe");
    judge(
      await runExperiment(ctx, {
        id: "pod-io-stress",
        group: "pod",
        title: "IO stress, 100 ms on 50 % of IO (the gateway's log through a slow pipe)",
        fault: experimentFault(pipe, [], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: [],
        metrics: [],
        undetected:
          "the log's rate (~1 line/s at info) fits in what the slowed reader drains: no write blocks, so nothing in the gateway waits",
      }),
    );
  });
});
