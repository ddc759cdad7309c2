import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import type { Pod } from "./harness/cluster.ts";
import { DEFAULT_MODEL } from "./harness/cluster.ts";
import type { GatewayProcess } from "./harness/gateway.ts";
import { postJson } from "./harness/http.ts";
import { assertOk, completeDirect, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt } from "./harness/workload.ts";

/**
 * An engine that loses half of its KV-event batches before they get a seq (`--lose-event-rate`):
 * its seqs stay contiguous and its replay buffer agrees with them, so nothing on the wire shows
 * the loss. A lost cache reset leaves the index claiming prefixes the engine no longer holds.
 * The gateway's prediction feedback sees the engine reuse fewer tokens than claimed, marks the
 * stream suspect (trust falls, one warning, a rebuild from the engine's buffer), and requests for
 * the prefixes it falsely claims go to the healthy pod that really holds them; healthy streams
 * keep trust 1.
 */
describe("e2e feedback: an engine that silently loses KV events", { timeout: scaled(240_000) }, () => {
  const cluster = useCluster();
  let lossy: Pod;
  let healthy: Pod[];
  /** prefixes the index claims on the lossy engine although its cache was reset */
  let falseClaims: string[] = [];

  const claimed = async (gw: GatewayProcess, pod: Pod, text: string): Promise<number> =>
    (await gw.match(DEFAULT_MODEL, text)).pods.find((p) => p.pod === pod.name)?.matchedTokens ?? 0;
  const row = async (gw: GatewayProcess, pod: Pod) => {
    const r = await gw.pod(pod.name);
    if (!r) throw new Error(`${pod.name} not listed`);
    return r as typeof r & { trust: number | null; suspect: boolean };
  };

  it("a lossy engine and two healthy ones go live", async () => {
    const c = cluster();
    // both engine processes start at once (the healthy pair shares one)
    [lossy, healthy] = await Promise.all([
      c.createPod("lossy", {
        engine: { numGpuBlocks: 4096, extraArgs: ["--lose-event-rate", "0.5", "--seed", "11"] },
      }),
      c.createPods(["healthy-1", "healthy-2"], { engine: { numGpuBlocks: 4096 } }, 2),
    ]);
    await waitLive(gatewayOf(c), [lossy, ...healthy]);
  });

  it("a lost cache reset leaves the index claiming prefixes the engine no longer holds", async () => {
    const gw = gatewayOf(cluster());
    const [h1] = healthy;
    let marker = 0;
    // each round: the same prefixes on the lossy engine and a healthy one, then a cache reset of
    // the lossy one; the reset's batch is lost half the time (a seeded draw)
    for (let round = 0; round < 8 && falseClaims.length < 8; round++) {
      const texts = Array.from({ length: 30 }, (_, i) => prefix(`lossy-r${round}-${i}`, 1000 * round + i));
      for (const t of texts) {
        await completeDirect(lossy, prompt(t, 0));
        await completeDirect(h1, prompt(t, 0));
      }
      await waitFor(
        `round ${round}: the healthy engine's blocks indexed`,
        async () => (await claimed(gw, h1, prompt(texts.at(-1)!, 1))) >= 64,
        { timeoutMs: scaled(10_000), intervalMs: 100 },
      );
      const reset = await fetch(`${lossy.http}/reset_prefix_cache`, { method: "POST" });
      assert.equal(reset.status, 200, "the lossy engine's cache is reset");
      // a later batch that arrived means the reset's fate is known (batches apply in seq order)
      for (let arrived = false; !arrived; ) {
        const m = prefix(`marker-${marker++}`, 77_000 + marker);
        await completeDirect(lossy, prompt(m, 0));
        arrived = await waitFor(
          `marker ${marker} indexed`,
          async () => (await claimed(gw, lossy, prompt(m, 1))) > 0,
          {
            timeoutMs: scaled(1_500),
            intervalMs: 50,
          },
        ).then(
          () => true,
          () => false,
        );
      }
      const held: string[] = [];
      for (const t of texts) if ((await claimed(gw, lossy, prompt(t, 1))) >= 64) held.push(t);
      falseClaims = held;
      console.log(`round ${round}: the index claims ${held.length} of 30 reset prefixes on the lossy engine`);
    }
    assert.ok(falseClaims.length >= 8, `only ${falseClaims.length} false claims after 8 rounds`);
    const st = await row(gw, lossy);
    assert.equal(st.state, "live", "nothing on the wire shows the loss");
    assert.equal(st.gaps, 0);
  });

  it("the feedback marks the lossy stream suspect: trust falls, one warning, a rebuild", async () => {
    const gw = gatewayOf(cluster());
    const pending = [...falseClaims];
    const overPredicted: number[] = [];
    let k = 0;
    // the falsely claimed prefixes tie between the lossy engine and the healthy one that holds
    // them: the lossy one gets about half and reuses nothing it was credited with
    for (let n = 0; n < 80 && pending.length > 0; n++) {
      if ((await row(gw, lossy)).suspect) break;
      const t = pending[k++ % pending.length]!;
      const r = await gw.complete(DEFAULT_MODEL, prompt(t, 100 + n));
      assertOk(r, `request ${n}`);
      if (r.pod === lossy.name) {
        overPredicted.push((r.matchedTokens ?? 0) - r.cachedTokens);
        pending.splice(pending.indexOf(t), 1);
      }
    }
    console.log(`${overPredicted.length} requests went to the lossy engine before it was suspect`);
    await waitFor("the lossy stream suspect", async () => (await row(gw, lossy)).suspect, {
      timeoutMs: scaled(5_000),
      intervalMs: 100,
    });
    assert.ok(
      overPredicted.filter((x) => x >= 64).length >= 4,
      `the lossy engine reused less than claimed: ${overPredicted.join(", ")}`,
    );
    assert.ok((await row(gw, lossy)).trust! < 0.5);
    for (const h of healthy) {
      const r = await row(gw, h);
      assert.equal(r.suspect, false, `${h.name} not suspect`);
      assert.ok(r.trust! >= 0.9, `${h.name} trust ${r.trust}`);
    }
    const metrics = await gw.metrics();
    const trust = new RegExp(`kvsync_stream_trust_ratio\\{pod="${lossy.name}",rank=""\\} ([0-9.e-]+)`).exec(
      metrics,
    );
    assert.ok(trust && Number(trust[1]) < 0.5, `trust metric: ${trust?.[0]}`);
    await waitFor(
      "a rebuild of the lossy stream",
      async () =>
        /kvsync_subscriber_rebuilds_total\{stream="default\/lossy"\} [1-9]/.test(await gw.metrics()),
      { timeoutMs: scaled(5_000), intervalMs: 100 },
    );
    const lines = readFileSync(gw.process.logFile, "utf8")
      .split("\n")
      .filter((l) => l.includes('"routing.stream_suspect"'))
      .map((l) => JSON.parse(l) as { stream: string; msg: string });
    assert.deepEqual(
      lines.map((l) => l.stream),
      [lossy.name],
      "one warning, for the lossy stream only",
    );
    assert.match(lines[0]!.msg, /lost/);
  });

  it("after detection, requests for the prefixes it falsely claims go to the pod that holds them", async () => {
    const gw = gatewayOf(cluster());
    // the rebuild replays the engine's buffer, which lacks the lost reset too: the claims return
    await waitFor("the lossy stream live again", async () => (await row(gw, lossy)).state === "live", {
      timeoutMs: scaled(10_000),
      intervalMs: 100,
    });
    const still: string[] = [];
    for (const t of falseClaims) if ((await claimed(gw, lossy, prompt(t, 1))) >= 64) still.push(t);
    assert.ok(still.length >= 2, `${still.length} claims left on the lossy engine`);
    const explain = await postJson<{
      choice: { pod: string };
      candidates: Array<{ pod: string; trust: number; matchedTokens: number; savedTokens: number }>;
    }>(`${gw.adminUrl}/admin/route/explain`, { model: DEFAULT_MODEL, prompt: prompt(still[0]!, 500) });
    const byPod = new Map(explain.body.candidates.map((c) => [c.pod, c]));
    const l = byPod.get(lossy.name)!;
    assert.ok(l.matchedTokens >= 64 && l.trust < 0.5, JSON.stringify(l));
    assert.ok(l.savedTokens < l.matchedTokens * 0.5);
    assert.ok(byPod.get(healthy[0]!.name)!.trust >= 0.9);
    assert.notEqual(explain.body.choice.pod, lossy.name);
    for (const [i, t] of still.entries()) {
      for (let k = 0; k < 2; k++) {
        const r = await gw.complete(DEFAULT_MODEL, prompt(t, 600 + 10 * i + k));
        assertOk(r, `prefix ${i}/${k}`);
        assert.equal(r.pod, healthy[0]!.name, `prefix ${i}/${k} went to ${r.pod}`);
        assert.ok(r.cachedTokens >= 64, `served from cache: ${r.cachedTokens} tokens`);
      }
    }
  });
});
