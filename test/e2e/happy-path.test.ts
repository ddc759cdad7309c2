import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import { assertOk, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt } from "./harness/workload.ts";

// One pod with KV events enabled behind the gateway (Kubernetes discovery, real network).
describe("e2e happy path: one pod", { timeout: scaled(180_000) }, () => {
  const cluster = useCluster();
  let pod: Pod;
  const NUM_BLOCKS = 64;

  it("the pod's event stream goes live at the gateway", async () => {
    const c = cluster();
    pod = await c.createPod("engine-0", { engine: { numGpuBlocks: NUM_BLOCKS } });
    await waitLive(gatewayOf(c), [pod]);
    const listed = await gatewayOf(c).pod(pod.name);
    assert.equal(listed?.model, DEFAULT_MODEL);
  });

  it("requests through the gateway fill its cache (with evictions) and the index equals the engine truth", async () => {
    const gw = gatewayOf(cluster());
    let promptTokens = 0;
    for (let i = 0; i < 12; i++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(prefix(`hp${i}`, 100 + i), i));
      assertOk(r, `request ${i}`);
      assert.equal(r.pod, pod.name, `request ${i} served by ${r.pod}`);
      promptTokens += r.promptTokens;
    }
    // more full blocks went through the cache than it holds: blocks were evicted (BlockRemoved)
    assert.ok(
      promptTokens / 16 > NUM_BLOCKS * 1.5,
      `workload too small to evict: ${promptTokens} prompt tokens`,
    );
    await waitIndexMatchesTruth(gw, [pod]);
    const truth = (await gw.podBlocks(pod.name)).blocks.length;
    assert.ok(truth > NUM_BLOCKS / 2 && truth <= NUM_BLOCKS, `index holds ${truth} blocks`);
    const listed = await gw.pod(pod.name);
    assert.ok((listed?.eventsApplied ?? 0) > 0, `eventsApplied ${listed?.eventsApplied}`);
  });

  it("a repeated prefix is routed to the pod and reported cached by the engine", async () => {
    const gw = gatewayOf(cluster());
    const sys = prefix("repeat", 7);
    const first = await gw.complete(DEFAULT_MODEL, prompt(sys, 1));
    assertOk(first, "first request");
    // wait for its blocks to be indexed before asking again
    const next = prompt(sys, 2);
    let expected = 0;
    await waitFor(
      "index matches the repeated prefix",
      async () => {
        const m = await gw.match(DEFAULT_MODEL, next);
        expected = m.pods.find((p) => p.pod === pod.name)?.matchedTokens ?? 0;
        return expected >= 64 ? true : `matched ${expected} tokens of ${pod.name}`;
      },
      { timeoutMs: scaled(15_000), intervalMs: 50 },
    );
    const second = await gw.complete(DEFAULT_MODEL, next);
    assertOk(second, "second request");
    assert.equal(second.pod, pod.name);
    assert.equal(
      second.cachedTokens,
      expected,
      `engine reports ${second.cachedTokens} cached tokens, index predicted ${expected}`,
    );
    if (second.matchedTokens !== null)
      assert.equal(second.matchedTokens, expected, "x-kvsync-matched-tokens");
    await waitIndexMatchesTruth(gw, [pod]);
  });
});
