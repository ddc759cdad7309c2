import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import { assertOk, completeDirect, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt, words } from "./harness/workload.ts";

// Three pods: each pod's events land only under it; requests follow the prefix.
describe("e2e multi-pod: three pods", { timeout: scaled(240_000) }, () => {
  const cluster = useCluster();
  let pods: Pod[];
  const PREFIXES = 6;
  const sys = Array.from({ length: PREFIXES }, (_, i) => prefix(`mp${i}`, 200 + i));
  /** prefix i was put on pods[i % 3] */
  const home = (i: number) => pods[i % 3];

  it("three pods go live", async () => {
    const c = cluster();
    pods = await c.createPods(["engine-0", "engine-1", "engine-2"], { engine: { numGpuBlocks: 1024 } });
    await waitLive(gatewayOf(c), pods);
  });

  it("events from each pod land only under that pod", async () => {
    const gw = gatewayOf(cluster());
    // each prefix is put straight into one engine's cache (not through the gateway)
    for (let i = 0; i < PREFIXES; i++) await completeDirect(home(i), prompt(sys[i], 0));
    await waitIndexMatchesTruth(gw, pods);
    for (const p of pods)
      assert.ok((await gw.podBlocks(p.name)).blocks.length > 0, `${p.name} has no blocks`);
    for (let i = 0; i < PREFIXES; i++) {
      const m = await gw.match(DEFAULT_MODEL, prompt(sys[i], 99));
      const holders = m.pods.filter((x) => x.matchedBlocks > 0).map((x) => x.pod);
      assert.deepEqual(holders, [home(i).name], `prefix ${i} matched under ${holders.join(",")}`);
    }
  });

  it("requests go to the pod that holds their prefix, and the engine reports the hit", async () => {
    const gw = gatewayOf(cluster());
    for (let round = 1; round <= 3; round++) {
      for (let i = 0; i < PREFIXES; i++) {
        const text = prompt(sys[i], round * 10 + i);
        const m = await gw.match(DEFAULT_MODEL, text);
        const predicted = m.pods.find((x) => x.pod === home(i).name)?.matchedTokens ?? 0;
        assert.ok(
          predicted >= 64,
          `prefix ${i} round ${round}: index predicts ${predicted} tokens on ${home(i).name}`,
        );
        const r = await gw.complete(DEFAULT_MODEL, text);
        assertOk(r, `prefix ${i} round ${round}`);
        assert.equal(r.pod, home(i).name, `prefix ${i} round ${round} served by ${r.pod}`);
        assert.equal(
          r.cachedTokens,
          predicted,
          `prefix ${i} round ${round}: engine cached ${r.cachedTokens}`,
        );
      }
      // the shared prefixes' new blocks (each request's own question) are indexed under the home pod
      await waitIndexMatchesTruth(gatewayOf(cluster()), pods);
    }
  });

  it("after a mixed workload through the gateway the index equals every pod's truth", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const served = new Map<string, number>();
    // new prefixes, each sent several times: the first lands where the policy decides, the rest follow
    for (let i = 0; i < 8; i++) {
      const s = prefix(`mix${i}`, 300 + i);
      let owner: string | null = null;
      for (let k = 0; k < 3; k++) {
        const r = await gw.complete(DEFAULT_MODEL, prompt(s, k));
        assertOk(r, `mix ${i}/${k}`);
        served.set(r.pod!, (served.get(r.pod!) ?? 0) + 1);
        if (k === 0) {
          owner = r.pod;
          await waitFor(
            `prefix mix${i} indexed under ${owner}`,
            async () => {
              const m = await gw.match(DEFAULT_MODEL, prompt(s, 50));
              const got = m.pods.find((x) => x.pod === owner)?.matchedBlocks ?? 0;
              return got > 0 ? true : `no match under ${owner}`;
            },
            { timeoutMs: scaled(15_000), intervalMs: 50 },
          );
        } else {
          assert.equal(r.pod, owner, `mix ${i}/${k} left its prefix's pod ${owner} for ${r.pod}`);
          assert.ok(r.cachedTokens >= 64, `mix ${i}/${k}: engine cached only ${r.cachedTokens}`);
        }
      }
    }
    await waitIndexMatchesTruth(gw, c.list());
    for (const name of served.keys()) assert.ok(c.pods.has(name), `request served by unknown pod ${name}`);
  });
  it("a multi-turn chat stays on its pod and the engine confirms the predicted hit", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    for (let conv = 0; conv < 3; conv++) {
      const messages = [
        { role: "system", content: prefix(`chat${conv}`, 600 + conv) },
        { role: "user", content: words(610 + conv, 30) },
      ];
      const t1 = await gw.chat(DEFAULT_MODEL, messages, 8);
      assertOk(t1, `conversation ${conv} turn 1`);
      const reply = (t1.body as { choices: Array<{ message: { content: string } }> }).choices[0].message
        .content;
      messages.push({ role: "assistant", content: reply }, { role: "user", content: words(620 + conv, 20) });
      await waitIndexMatchesTruth(gw, c.list());
      const t2 = await gw.chat(DEFAULT_MODEL, messages, 8);
      assertOk(t2, `conversation ${conv} turn 2`);
      assert.equal(t2.pod, t1.pod, `conversation ${conv} moved from ${t1.pod} to ${t2.pod}`);
      assert.ok(t2.cachedTokens >= 64, `conversation ${conv} turn 2: engine cached ${t2.cachedTokens}`);
      assert.equal(
        t2.matchedTokens,
        t2.cachedTokens,
        `conversation ${conv}: gateway predicted ${t2.matchedTokens}`,
      );
    }
  });
  it("a restarted gateway rebuilds the index from the engines' replay buffers and routes as before", async () => {
    const c = cluster();
    const gw = await c.restartGateway();
    await waitLive(gw, pods);
    await waitIndexMatchesTruth(gw, pods);
    for (let i = 0; i < PREFIXES; i++) {
      const text = prompt(sys[i], 900 + i);
      const m = await gw.match(DEFAULT_MODEL, text);
      const best = m.pods[0];
      assert.equal(best?.pod, home(i).name, `prefix ${i}: best holder after restart ${best?.pod}`);
      const r = await gw.complete(DEFAULT_MODEL, text);
      assertOk(r, `prefix ${i} after gateway restart`);
      assert.equal(r.pod, home(i).name, `prefix ${i} served by ${r.pod}`);
      assert.equal(r.cachedTokens, best.matchedTokens, `prefix ${i}: engine cached ${r.cachedTokens}`);
    }
  });
});
