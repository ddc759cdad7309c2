/**
 * The simulator held to the real thing: the same multi-turn slice replayed through real mock
 * engines and the real gateway on loopback (real HTTP, real ZeroMQ KV events, the real index) and
 * through the simulator with the same policy and fleet model; the simulated hit rate must be
 * close (relative) to the engine-reported one.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { liveBlockTokens, runLive, sentArrivals, simulateAsLive } from "../../../src/eval/live.ts";
import { FLEET_DEFAULTS, type FleetOptions } from "../../../src/eval/simulator.ts";
import { MULTI_TURN_DEFAULTS, multiTurnWorkload } from "../../../src/eval/workload.ts";

// 16-token blocks and short replies keep the live run to seconds; 100 blocks per pod against
// ~32 open conversations of up to ~26 blocks each, so eviction is part of what is compared
const FLEET: FleetOptions = { ...FLEET_DEFAULTS, pods: 4, cacheBlocks: 100, blockTokens: 16, eventLagMs: 5 };
const slice = (requests: number, rate: number) =>
  multiTurnWorkload({
    ...MULTI_TURN_DEFAULTS,
    concurrentConversations: 32,
    seed: 3,
    requests,
    blockTokens: 16,
    minOutput: 4,
    maxOutput: 16,
    rate,
  });
// kv-aware's choices depend on timing (its learned prefill rate), which a loaded machine makes
// noisy: a longer slice averages that out; round-robin's choices do not, a short one is enough
const SLICES = { "kv-aware": slice(200, 16), "round-robin": slice(120, 10) };

test("block ids become token blocks: equal ids give equal tokens, other ids and private blocks differ", () => {
  const a = liveBlockTokens({ timestamp: 0, input_length: 40, output_length: 1, hash_ids: [7, 8, 9] }, 16, 0);
  const b = liveBlockTokens({ timestamp: 0, input_length: 40, output_length: 1, hash_ids: [7, 8, 5] }, 16, 1);
  const c = liveBlockTokens({ timestamp: 0, input_length: 40, output_length: 1, hash_ids: [7] }, 16, 2);
  assert.equal(a.length, 40);
  assert.deepEqual(a.slice(0, 32), b.slice(0, 32));
  assert.notDeepEqual(a.slice(32), b.slice(32));
  assert.deepEqual(a.slice(0, 16), c.slice(0, 16));
  assert.notDeepEqual(a.slice(16, 32), c.slice(16, 32)); // c's block 1 is private to request 2
  assert.ok(a.every((t) => Number.isInteger(t) && t >= 1000 && t < 101_000));
});

// kv-aware's choices follow timing (in-flight counts, its learned prefill rate): the simulator
// replays the arrivals the live client actually sent, each request's measured overhead and how
// long after its last modelled token it really ended (simulateAsLive), so the comparison is of
// routing and cache, not of the machine's load
const BOUND = 0.1;

test("a live replay's send times become the simulated arrivals, in order, from the trace's start", () => {
  const reqs = [0, 100, 200].map((t) => ({
    timestamp: 5000 + t,
    input_length: 32,
    output_length: 1,
    hash_ids: [t],
  }));
  const a = sentArrivals(reqs, [0, 130, 131]);
  assert.deepEqual(
    a.map((r) => r.timestamp),
    [5000, 5130, 5131],
  );
  assert.deepEqual(
    a.map((r) => r.hash_ids[0]),
    [0, 100, 200],
  );
});

for (const policy of ["kv-aware", "round-robin"] as const) {
  const REQS = SLICES[policy];
  test(`${policy}: simulated hit rate within ${BOUND * 100} % of the live fleet's on the same slice`, async (t) => {
    const live = await runLive(REQS, { fleet: FLEET, policy, requestTimeoutMs: 60_000 });
    assert.equal(live.errors, 0, live.firstError ?? "");
    assert.equal(
      live.requestsPerPod.reduce((a, b) => a + b, 0),
      REQS.length,
    );
    // the slice reuses prefixes: a hit rate near zero would make the comparison meaningless
    assert.ok(live.hitRate > 0.25, `live hit rate ${live.hitRate}`);
    assert.equal(live.requestOverheadMs.length, REQS.length);
    assert.ok(live.requestOverheadMs.every((x) => Number.isFinite(x) && x >= 0));
    assert.equal(live.requestEndDelayMs.length, REQS.length);
    assert.ok(
      live.requestEndDelayMs.every((x, i) => Number.isFinite(x) && x >= live.requestOverheadMs[i] / 2),
    );
    const sim = simulateAsLive(REQS, policy, FLEET, live);
    const rel = Math.abs(sim.hitRate - live.hitRate) / live.hitRate;
    t.diagnostic(
      `live hit ${live.hitRate.toFixed(4)} ttft p50 ${live.ttftP50Ms.toFixed(0)} ms per pod ${live.requestsPerPod.join("/")}; ` +
        `sim hit ${sim.hitRate.toFixed(4)} ttft p50 ${sim.ttftP50Ms.toFixed(0)} ms per pod ${sim.requestsPerPod.join("/")}; ` +
        `overhead median ${live.overheadMs.toFixed(1)} ms`,
    );
    assert.ok(
      rel <= BOUND,
      `sim ${sim.hitRate.toFixed(4)} vs live ${live.hitRate.toFixed(4)} (${(rel * 100).toFixed(1)} %), overhead median ${live.overheadMs.toFixed(1)} ms`,
    );
  });
}
