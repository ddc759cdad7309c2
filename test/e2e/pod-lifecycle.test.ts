import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import {
  assertOk,
  completeDirect,
  gatewayOf,
  podBlockCount,
  useCluster,
  waitGone,
  waitLive,
} from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt } from "./harness/workload.ts";

// Pods come and go as a controller scales and Kubernetes reschedules; nothing stale survives.
describe("e2e pod lifecycle", { timeout: scaled(300_000) }, () => {
  const cluster = useCluster();
  const tpl = { engine: { numGpuBlocks: 1024 } };
  const sys = [0, 1, 2].map((i) => prefix(`lc${i}`, 400 + i));
  let pods: Pod[] = [];

  it("a new pod's first events are indexed", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    pods = await c.scale("engine", 1, tpl);
    assert.equal(pods.length, 1);
    await waitLive(gw, pods);
    assert.equal(await podBlockCount(gw, pods[0].name), 0, "fresh pod has entries before any request");
    await completeDirect(pods[0], prompt(sys[0], 0));
    await waitIndexMatchesTruth(gw, pods);
    assert.ok(await podBlockCount(gw, pods[0].name), "first events not indexed");
  });

  it("scale 1 → 3: new pods are indexed and receive their prefixes' requests", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    pods = await c.scale("engine", 3, tpl);
    assert.deepEqual(
      pods.map((p) => p.podName),
      ["engine-0", "engine-1", "engine-2"],
    );
    await waitLive(gw, pods);
    for (let i = 1; i < 3; i++) await completeDirect(pods[i], prompt(sys[i], 0));
    await waitIndexMatchesTruth(gw, pods);
    for (let i = 0; i < 3; i++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[i], 1));
      assertOk(r, `prefix ${i}`);
      assert.equal(r.pod, pods[i].name, `prefix ${i} served by ${r.pod}`);
      assert.ok(r.cachedTokens >= 64, `prefix ${i}: engine cached ${r.cachedTokens}`);
    }
    await waitIndexMatchesTruth(gw, pods);
  });

  it("a not-ready pod gets no requests but keeps its stream; ready again, it gets its prefix back", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const p2 = pods[2];
    await c.setReady(p2, false);
    // probes carry prefix 2: the moment the gateway sees the flip, they leave p2
    await waitFor(
      `gateway stops routing to not-ready ${p2.name}`,
      async () => {
        const r = await gw.complete(DEFAULT_MODEL, prompt(sys[2], 1000 + Math.floor(Math.random() * 1e6)));
        assertOk(r, "probe");
        return r.pod !== p2.name ? true : "still routed to it";
      },
      { timeoutMs: scaled(15_000), intervalMs: 100 },
    );
    for (let k = 0; k < 5; k++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[2], 2000 + k));
      assertOk(r, `request ${k} while not ready`);
      assert.notEqual(r.pod, p2.name, `request ${k} routed to not-ready ${p2.name}`);
    }
    const listed = await gw.pod(p2.name);
    assert.ok(listed, "not-ready pod dropped from the gateway (its stream should stay)");
    await waitIndexMatchesTruth(gw, pods);
    assert.ok(await podBlockCount(gw, p2.name), "not-ready pod lost its entries");
    await c.setReady(p2, true);
    await waitFor(
      `gateway routes prefix 2 to ${p2.name} again`,
      async () => {
        const r = await gw.complete(DEFAULT_MODEL, prompt(sys[2], 3000 + Math.floor(Math.random() * 1e6)));
        assertOk(r, "probe");
        return r.pod === p2.name ? true : `routed to ${r.pod}`;
      },
      { timeoutMs: scaled(15_000), intervalMs: 100 },
    );
    await waitIndexMatchesTruth(gw, pods);
  });

  let oldIp = "";
  let oldSeq = -1;
  it("delete a pod: its entries disappear and no request is routed to it from that moment", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const victim = pods[1];
    // enough traffic for a seq well above what a fresh engine reaches with one request
    for (let k = 0; k < 6; k++) await completeDirect(victim, prompt(sys[1], 100 + k));
    await waitIndexMatchesTruth(gw, pods);
    oldSeq = (await gw.pod(victim.name))?.lastSeq ?? -1;
    oldIp = victim.ip;
    await c.deletePod(victim);
    await waitGone(gw, victim.name);
    const m = await gw.match(DEFAULT_MODEL, prompt(sys[1], 5));
    assert.deepEqual(
      m.pods.filter((x) => x.pod === victim.name),
      [],
      "deleted pod still matches",
    );
    const rest = pods.filter((p) => p !== victim);
    for (let k = 0; k < 9; k++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[k % 3], 500 + k));
      assertOk(r, `request ${k} after delete`);
      assert.notEqual(r.pod, victim.name, `request ${k} routed to deleted ${victim.name}`);
      assert.ok(
        rest.some((p) => p.name === r.pod),
        `request ${k} served by ${r.pod}`,
      );
    }
    await waitIndexMatchesTruth(gw, rest);
  });

  it("the pod comes back with a new address and a restarted seq, indexed afresh", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const back = await c.createPod("engine-1", tpl);
    assert.notEqual(back.ip, oldIp, "recreated pod kept its address");
    pods = [pods[0], back, pods[2]];
    await waitLive(gw, [back]);
    assert.equal(await podBlockCount(gw, back.name), 0, "recreated pod inherited old entries");
    await completeDirect(back, prompt(sys[1], 0));
    await waitIndexMatchesTruth(gw, pods);
    const listed = await gw.pod(back.name);
    assert.ok(listed && listed.lastSeq !== null, "no batch applied for the recreated pod");
    assert.ok(
      listed.lastSeq! < oldSeq,
      `seq did not restart: lastSeq ${listed.lastSeq} (before delete: ${oldSeq})`,
    );
    // the old incarnation's prefix-1 blocks are gone; only what the new engine stored counts
    const r = await gw.complete(DEFAULT_MODEL, prompt(sys[1], 7));
    assertOk(r, "prefix 1 after return");
    assert.equal(r.pod, back.name);
    assert.ok(r.cachedTokens >= 64, `engine cached ${r.cachedTokens}`);
    await waitIndexMatchesTruth(gw, pods);
  });

  it("scale 3 → 1: removed pods leave nothing behind", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const before = c.list().map((p) => p.name);
    pods = await c.scale("engine", 1, tpl);
    assert.deepEqual(
      pods.map((p) => p.name),
      ["default/engine-0"],
    );
    for (const name of before) if (name !== pods[0].name) await waitGone(gw, name);
    const listed = (await gw.pods()).map((p) => p.name);
    assert.deepEqual(listed, [pods[0].name]);
    for (let i = 0; i < 3; i++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[i], 900 + i));
      assertOk(r, `request ${i} at scale 1`);
      assert.equal(r.pod, pods[0].name);
    }
    await waitIndexMatchesTruth(gw, pods);
  });
});
