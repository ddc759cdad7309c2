import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import { assertOk, completeDirect, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled } from "./harness/wait.ts";
import { prefix, prompt, words } from "./harness/workload.ts";

/**
 * Mixed engine flavors behind one gateway, with no per-engine setting on the gateway side: each
 * pod publishes its engine's wire format (`kvsync mock-engine --flavor`), the index equals every
 * pod's truth, and every request's engine-reported cached_tokens equals the gateway's prediction.
 * A new layout is one more row in FLEET.
 */
const FLEET: Array<{ name: string; args: string[] }> = [
  { name: "vllm-map", args: ["--flavor", "vllm", "--event-format", "map"] },
  { name: "vllm-array", args: ["--flavor", "vllm", "--event-format", "array"] },
  { name: "sglang", args: ["--flavor", "sglang"] },
  { name: "trtllm", args: ["--flavor", "trtllm"] },
  // hybrid attention: a 40-token sliding-window group (group 0) beside full attention (group 1)
  // (a small pool, so the window group's early-freed blocks are evicted first)
  { name: "vllm-hybrid", args: ["--flavor", "vllm", "--hybrid", "40", "--num-gpu-blocks", "64"] },
];
const HYBRID = FLEET.findIndex((f) => f.name === "vllm-hybrid");

describe("e2e engine flavors: mixed wire formats", { timeout: scaled(180_000) }, () => {
  const cluster = useCluster();
  const pods: Pod[] = [];
  const sys = FLEET.map((_, i) => prefix(`flv${i}`, 160 + i));

  it("one pod per flavor goes live", async () => {
    const c = cluster();
    for (const f of FLEET) pods.push(...(await c.createPods([f.name], { engine: { extraArgs: f.args } })));
    await waitLive(gatewayOf(c), pods);
  });

  it("each pod's events index its own blocks: index == truth for every stream", async () => {
    const gw = gatewayOf(cluster());
    for (let i = 0; i < pods.length; i++) await completeDirect(pods[i]!, prompt(sys[i]!, 0));
    await waitIndexMatchesTruth(gw, pods);
    for (let i = 0; i < pods.length; i++) {
      const m = await gw.match(DEFAULT_MODEL, prompt(sys[i]!, 1));
      const holders = m.pods.filter((x) => x.matchedBlocks > 0).map((x) => x.pod);
      assert.deepEqual(holders, [pods[i]!.name], `${FLEET[i]!.name}'s prefix matched under ${holders}`);
    }
  });

  it("requests follow their prefix; engine cached_tokens == the gateway's prediction", async () => {
    const gw = gatewayOf(cluster());
    for (let i = 0; i < pods.length; i++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[i]!, 2));
      assertOk(r, FLEET[i]!.name);
      assert.equal(r.pod, pods[i]!.name, `${FLEET[i]!.name}'s prefix served by ${r.pod}`);
      assert.ok((r.matchedTokens ?? 0) >= 64, `${FLEET[i]!.name}: predicted ${r.matchedTokens}`);
      assert.equal(r.cachedTokens, r.matchedTokens, `${FLEET[i]!.name}: engine cached ${r.cachedTokens}`);
    }
    await waitIndexMatchesTruth(gw, pods);
  });

  it("hybrid: a prompt sharing only the head of an evicted-window prefix gets vLLM's coordinator rule", async () => {
    const gw = gatewayOf(cluster());
    const pod = pods[HYBRID]!;
    const head = prefix("hyb-head", 400, 60);
    // a long prompt: its early blocks leave the window mid-prefill and are freed at once
    await completeDirect(pod, `${head} ${words(401, 160)}`);
    // unrelated prompts take the free blocks; the window group's early-freed ones go first
    for (let k = 0; k < 4; k++) await completeDirect(pod, prompt(prefix(`hyb-fill${k}`, 410 + k), k));
    await waitIndexMatchesTruth(gw, [pod]);
    const r = await gw.complete(DEFAULT_MODEL, `${head} ${words(402, 30)}`);
    assertOk(r, "hybrid head");
    assert.equal(r.cachedTokens, r.matchedTokens, `hybrid: engine cached ${r.cachedTokens}`);
    if ((r.matchedTokens ?? 0) > 0) assert.equal(r.pod, pod.name);
    await waitIndexMatchesTruth(gw, pods);
  });
});
