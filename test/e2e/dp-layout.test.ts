import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import { getJson } from "./harness/http.ts";
import { assertOk, gatewayOf, useCluster } from "./harness/suite.ts";
import { type BlocksDoc, describeDiff, diffBlocks, diffIsEmpty } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt } from "./harness/workload.ts";

/**
 * A data-parallel engine laid out as deployments do (two ranks, both ports offset by the rank,
 * the replay base 100 ports away so the ranges never meet), described to the gateway by
 * Kubernetes annotations only, with no block size declared (its events say 32). Then a pod whose
 * annotations give the colliding default layout (replay 5558 with two ranks): refused, not
 * subscribed, and said so in /admin/pods and /metrics.
 */
describe("e2e data-parallel layouts", { timeout: scaled(180_000) }, () => {
  const cluster = useCluster();
  let dp: Pod;
  const DP_ANNOTATIONS = {
    "kvsync.io/data-parallel-size": "2",
    "kvsync.io/kv-replay-port": "5658",
    "kvsync.io/block-size": "",
  };
  const DP_ENGINE = {
    blockSize: 32,
    extraArgs: [
      "--data-parallel-size",
      "2",
      "--replay-endpoint",
      "tcp://*:5658",
      "--dp-routing",
      "round-robin",
    ],
  };

  /** index == engine truth for each rank of the pod */
  async function rankTruth(pod: Pod): Promise<true | string> {
    const gw = gatewayOf(cluster());
    for (const rank of [0, 1]) {
      const truth = await getJson<BlocksDoc>(`${pod.http}/debug/kv-cache?rank=${rank}`);
      const index = await getJson<BlocksDoc>(
        `${gw.adminUrl}/admin/pods/${encodeURIComponent(pod.name)}/blocks?rank=${rank}`,
      );
      const d = diffBlocks(index, truth);
      if (!diffIsEmpty(d)) return describeDiff(`${pod.name}#${rank}`, d);
    }
    return true;
  }

  it("both ranks' streams go live at port + rank; the block size comes from the events", async () => {
    const c = cluster();
    dp = await c.createPod("dp-engine", { engine: DP_ENGINE, annotations: DP_ANNOTATIONS });
    const gw = gatewayOf(c);
    await waitFor(
      "both ranks live",
      async () => {
        const rows = (await gw.pods()).filter((p) => p.name === dp.name);
        return rows.length === 2 && rows.every((r) => r.state === "live");
      },
      { timeoutMs: scaled(30_000) },
    );
    const rows = (await gw.pods()).filter((p) => p.name === dp.name);
    assert.deepEqual(
      rows.map((r) => [r.stream, r.rank, r.declaredBlockSize]),
      [
        [`${dp.name}#0`, 0, null],
        [`${dp.name}#1`, 1, null],
      ],
    );
  });

  it("requests through the gateway: index == truth per rank, and the engine's cached tokens equal the prediction", async () => {
    const gw = gatewayOf(cluster());
    const sys = [prefix("dpA", 40), prefix("dpB", 41)];
    for (let k = 0; k < 4; k++)
      for (const s of sys) assertOk(await gw.complete(DEFAULT_MODEL, prompt(s, k)), `warm ${k}`);
    await waitFor("index == truth per rank", () => rankTruth(dp), { timeoutMs: scaled(20_000) });
    const rows = (await gw.pods()).filter((p) => p.name === dp.name);
    assert.ok(
      rows.every((r) => r.blockSize === 32),
      JSON.stringify(rows.map((r) => r.blockSize)),
    );
    let hits = 0;
    for (let k = 10; k < 16; k++) {
      for (const s of sys) {
        const r = await gw.complete(DEFAULT_MODEL, prompt(s, k));
        assertOk(r, `round ${k}`);
        assert.equal(
          r.cachedTokens,
          r.matchedTokens,
          `round ${k}: engine cached ${r.cachedTokens}, predicted ${r.matchedTokens}`,
        );
        if (r.cachedTokens > 0) hits++;
      }
      await waitFor("index == truth per rank", () => rankTruth(dp), { timeoutMs: scaled(20_000) });
    }
    assert.ok(hits >= 8, `only ${hits} of 12 requests hit the cache`);
    assert.ok(
      rows.every((r) => (r.warnings as unknown[]).length === 0),
      JSON.stringify(rows),
    );
  });

  it("a pod annotated with the colliding default layout is refused, visibly", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const bad = await c.createPod("dp-collide", {
      engine: DP_ENGINE,
      annotations: { "kvsync.io/data-parallel-size": "2", "kvsync.io/kv-replay-port": "5558" },
    });
    await waitFor(
      "refused in /admin/pods",
      async () => {
        const row = (await gw.pods()).find((p) => p.name === bad.name);
        const w = (row?.warnings as Array<{ code: string; message: string }> | undefined) ?? [];
        return row?.stream === null && w.some((x) => x.code === "layout_refused" && /5558/.test(x.message));
      },
      { timeoutMs: scaled(20_000) },
    );
    const metrics = await gw.metrics();
    assert.match(
      metrics,
      new RegExp(
        `kvsync_subscriber_layout_refused\\{pod="${bad.name.replace("/", "\\/")}",reason="collision"\\} 1`,
      ),
    );
    await c.deletePod(bad);
  });
});
