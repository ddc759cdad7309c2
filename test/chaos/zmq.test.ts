import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { scaled } from "../e2e/harness/wait.ts";
import { netTarget } from "./faults/fault.ts";
import { PortBlock } from "./faults/port-block.ts";
import { RelayCorruption, RelaySidecar, relayAnnotations } from "./faults/relay.ts";
import { TimeSkew } from "./faults/time-skew.ts";
import { experimentFault } from "./harness/adapt.ts";
import { runExperiment, useChaos } from "./harness/experiment.ts";
import type { ExperimentResult } from "./harness/results.ts";

// Chaos on the KV-event streams themselves: the ZMQ ports blocked while HTTP flows, bytes of
// the stream corrupted, and clocks skewed (an engine's, the gateway's).
describe("chaos: zmq", { timeout: scaled(600_000) }, () => {
  // both clocks run under libfaketime from the start, at +0 until an experiment skews them
  const engineSkew = new TimeSkew(30);
  const gatewaySkew = new TimeSkew(30);
  // pod 1's streams go through a relay sidecar (the corruption's injector; passthrough until then)
  let sidecar: RelaySidecar | null = null;
  const ctx = useChaos({
    gatewayEnv: gatewaySkew.env(),
    engineEnv: (k) => (k === 3 ? engineSkew.env() : undefined),
    podAnnotations: (k) => (k === 1 ? relayAnnotations() : undefined),
    afterPods: async (pods) => {
      const p = pods[1];
      sidecar = await RelaySidecar.start({ ns: p.node.ns, ip: p.ip, logDir: ctx.cluster().logDir });
    },
  });
  const judge = (r: ExperimentResult) =>
    assert.deepEqual(r.failures, [], `${r.id}: ${r.failures.join("\n")}`);

  it("setup: 4 engine pods, live streams, chat load ready", async () => {
    assert.equal((await ctx.setup()).length, 4);
  });

  it("port block 5557 + 5558: the event stream is cut while HTTP and the cache keep changing", async () => {
    const pod = ctx.pods()[2];
    judge(
      await runExperiment(ctx, {
        id: "zmq-port-block",
        group: "zmq",
        title: "port block 5557 + 5558 (nftables on those ports only)",
        fault: experimentFault(new PortBlock(netTarget(ctx.cluster().net, pod.node, pod.ip)), [pod], {
          servesHttp: true,
        }),
        holdMs: scaled(10_000),
        targetMs: 2_000,
        events: [
          "subscriber.stalled",
          "subscriber.state[state=down|connecting]",
          "subscriber.reconnected",
          // reconnected, the stream asks the engine for what it missed at once (no gap event:
          // it does not wait for the next live batch to show one)
          "subscriber.replay",
        ],
        metrics: ["kvsync_subscriber_stalls_total", "kvsync_subscriber_replays_total"],
      }),
    );
  });

  it("connection corruption: 50 % of the event stream's packets get bytes flipped", async () => {
    const pod = ctx.pods()[1];
    if (!sidecar) throw new Error("no relay sidecar");
    judge(
      await runExperiment(ctx, {
        id: "zmq-corruption",
        group: "zmq",
        title: "connection corruption, 50 % of packets (relay flips bytes in the event stream)",
        fault: experimentFault(new RelayCorruption(sidecar), [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: [
          "subscriber.decode_error",
          "subscriber.suspect",
          "subscriber.state[state=suspect]",
          "subscriber.rebuild",
        ],
        metrics: [
          "kvsync_subscriber_decode_errors_total",
          "kvsync_subscriber_suspects_total",
          "kvsync_subscriber_rebuilds_total",
        ],
      }),
    );
  });

  it("time skew +30 s on one engine (libfaketime)", async () => {
    const pod = ctx.pods()[3];
    engineSkew.probeUrl = `${pod.http}/health`;
    judge(
      await runExperiment(ctx, {
        id: "zmq-time-skew-engine",
        group: "zmq",
        title: "time skew +30 s, one engine (libfaketime)",
        fault: experimentFault(engineSkew, [pod], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: ["subscriber.clock_skew"],
        metrics: ["kvsync_subscriber_clock_skews_total"],
      }),
    );
  });

  it("time skew +30 s on the gateway (libfaketime)", async () => {
    gatewaySkew.probeUrl = `${ctx.cluster().gateway!.adminUrl}/healthz`;
    judge(
      await runExperiment(ctx, {
        id: "zmq-time-skew-gateway",
        group: "zmq",
        title: "time skew +30 s, the gateway (libfaketime)",
        fault: experimentFault(gatewaySkew, [], { servesHttp: true }),
        holdMs: scaled(10_000),
        targetMs: 5_000,
        events: ["process.clock_jump"],
        metrics: ["kvsync_process_clock_jumps_total"],
      }),
    );
  });
});
