import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import type { RoutedResponse } from "./harness/gateway.ts";
import {
  assertOk,
  completeDirect,
  gatewayOf,
  podBlockCount,
  useCluster,
  waitGone,
  waitLive,
  waitPodSet,
} from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled, waitFor } from "./harness/wait.ts";
import { prefix, prompt, words } from "./harness/workload.ts";

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
    await waitPodSet(gw, pods);
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
    await waitFor(
      `gateway sees ${p2.name} not ready`,
      async () => ((await gw.pod(p2.name))?.ready === false ? true : "still ready"),
      { timeoutMs: scaled(15_000), intervalMs: 50 },
    );
    for (let k = 0; k < 5; k++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[2], 2000 + k));
      assertOk(r, `request ${k} while not ready`);
      assert.notEqual(r.pod, p2.name, `request ${k} routed to not-ready ${p2.name}`);
    }
    // its stream stays: what it stores while not ready is indexed
    const later = prefix("lc-notready", 460);
    await completeDirect(p2, prompt(later, 0));
    await waitIndexMatchesTruth(gw, pods);
    const m = await gw.match(DEFAULT_MODEL, prompt(later, 1));
    assert.deepEqual(
      m.pods.filter((x) => x.matchedBlocks > 0).map((x) => x.pod),
      [p2.name],
      "blocks stored while not ready not indexed under the pod",
    );
    // even holding the only copy, a not-ready pod gets no request
    const r0 = await gw.complete(DEFAULT_MODEL, prompt(later, 2));
    assertOk(r0, "request for the not-ready pod's prefix");
    assert.notEqual(r0.pod, p2.name, "routed to a not-ready pod");
    await c.setReady(p2, true);
    await waitFor(
      `gateway sees ${p2.name} ready`,
      async () => ((await gw.pod(p2.name))?.ready === true ? true : "still not ready"),
      { timeoutMs: scaled(15_000), intervalMs: 50 },
    );
    const other = r0.pod!;
    // r0 put the prefix on another pod too: ask for a longer match only p2 can serve
    const ext = `${prompt(later, 0)} ${words(461, 30)}`;
    const m2 = await gw.match(DEFAULT_MODEL, ext);
    const best = m2.pods[0];
    assert.equal(best?.pod, p2.name, `best holder of p2's own prompt is ${best?.pod} (also on ${other})`);
    const r = await gw.complete(DEFAULT_MODEL, ext);
    assertOk(r, "request after ready again");
    assert.equal(r.pod, p2.name, `served by ${r.pod}`);
    assert.equal(r.cachedTokens, best.matchedTokens, `engine cached ${r.cachedTokens}`);
    await waitIndexMatchesTruth(gw, pods);
  });

  let oldIp = "";
  let victim: Pod;
  let oldSeq = -1;
  it("delete a pod: its entries disappear and no request is routed to it from that moment", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    victim = pods[1];
    // enough traffic for a seq well above what a fresh engine reaches with one request
    for (let k = 0; k < 6; k++) await completeDirect(victim, prompt(sys[1], 100 + k));
    await waitIndexMatchesTruth(gw, pods);
    oldSeq = (await gw.pod(victim.name))?.lastSeq ?? -1;
    oldIp = victim.ip;
    // traffic keeps flowing (one request at a time) while the pod is deleted
    let stopTraffic = false;
    let notRoutable = false;
    const sent: Array<{ r: RoutedResponse; afterNotReady: boolean }> = [];
    let current: Promise<unknown> = Promise.resolve();
    const traffic = (async () => {
      for (let k = 0; !stopTraffic; k++) {
        const afterNotReady = notRoutable;
        const p = gw.complete(DEFAULT_MODEL, prompt(sys[k % 3], 700 + k));
        current = p;
        sent.push({ r: await p, afterNotReady });
      }
    })();
    await c.deletePod(victim, {
      // preStop: the gateway has seen the pod terminating (not ready); in-flight work finishes
      preStop: async () => {
        await waitFor(
          `gateway sees terminating ${victim.name} not ready`,
          async () => ((await gw.pod(victim.name))?.ready === false ? true : "still ready"),
          { timeoutMs: scaled(15_000), intervalMs: 50 },
        );
        notRoutable = true;
        await current;
      },
    });
    await waitGone(gw, victim.name);
    stopTraffic = true;
    await traffic;
    assert.ok(sent.length > 0, "no request during the deletion");
    for (const [k, { r, afterNotReady }] of sent.entries()) {
      assertOk(r, `request ${k} during the deletion`);
      if (afterNotReady)
        assert.notEqual(r.pod, victim.name, `request ${k} routed to terminating ${victim.name}`);
    }
    await waitPodSet(
      gw,
      pods.filter((p) => p !== victim),
    );
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
    const back = await c.recreatePod(victim);
    assert.equal(back.name, victim.name);
    assert.notEqual(back.ip, oldIp, "recreated pod kept its address");
    pods = [pods[0], back, pods[2]];
    await waitLive(gw, [back]);
    await waitPodSet(gw, pods);
    assert.equal(await podBlockCount(gw, back.name), 0, "recreated pod inherited old entries");
    // a prefix only the new incarnation holds
    const fresh = prefix("lc-back", 450);
    await completeDirect(back, prompt(fresh, 0));
    await waitIndexMatchesTruth(gw, pods);
    const listed = await gw.pod(back.name);
    assert.ok(listed && listed.lastSeq !== null, "no batch applied for the recreated pod");
    assert.ok(
      listed.lastSeq! < oldSeq,
      `seq did not restart: lastSeq ${listed.lastSeq} (before delete: ${oldSeq})`,
    );
    const holders = (await gw.match(DEFAULT_MODEL, prompt(fresh, 1))).pods.filter((x) => x.matchedBlocks > 0);
    assert.deepEqual(
      holders.map((x) => x.pod),
      [back.name],
    );
    const r = await gw.complete(DEFAULT_MODEL, prompt(fresh, 7));
    assertOk(r, "fresh prefix after return");
    assert.equal(r.pod, back.name, `fresh prefix served by ${r.pod}`);
    assert.equal(r.cachedTokens, holders[0].matchedTokens, `engine cached ${r.cachedTokens}`);
    await waitIndexMatchesTruth(gw, pods);
  });

  it("an engine crashes and restarts in place: the old incarnation's entries do not survive", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const p0 = pods[0];
    const ip = p0.ip;
    assert.ok(await podBlockCount(gw, p0.name), "engine-0 holds nothing before the crash");
    await c.restartEngine(p0);
    assert.equal(p0.ip, ip);
    await waitLive(gw, [p0]);
    // before the new engine stores anything, the index agrees with its empty cache
    await waitIndexMatchesTruth(gw, [p0]);
    assert.equal(await podBlockCount(gw, p0.name), 0, "pre-crash entries survived the restart");
    // the new engine stores something: its seq starts again at 0
    const crash = prefix("lc-crash", 470);
    await completeDirect(p0, prompt(crash, 0));
    await waitIndexMatchesTruth(gw, pods);
    const m = await gw.match(DEFAULT_MODEL, prompt(sys[0], 77));
    assert.deepEqual(
      m.pods.filter((x) => x.pod === p0.name && x.matchedBlocks > 0),
      [],
      "pre-crash prefix still matches under the restarted engine",
    );
    const r = await gw.complete(DEFAULT_MODEL, prompt(crash, 1));
    assertOk(r, "request after the restart");
    assert.equal(r.pod, p0.name);
    assert.ok(r.cachedTokens >= 64, `engine cached ${r.cachedTokens}`);
  });

  it("an engine restarts at a new address (IP change of the same Pod): old entries dropped at once", async () => {
    const c = cluster();
    const gw = gatewayOf(c);
    const p0 = pods[0];
    const ip = p0.ip;
    assert.ok(await podBlockCount(gw, p0.name), "engine-0 holds nothing before the move");
    await c.restartEngine(p0, { newAddress: true });
    assert.notEqual(p0.ip, ip);
    await waitLive(gw, [p0]);
    await waitFor(
      `old entries of ${p0.name} dropped after its IP change`,
      async () => {
        const n = await podBlockCount(gw, p0.name);
        return n === 0 ? true : `${n} blocks of the old address still indexed`;
      },
      { timeoutMs: scaled(15_000), intervalMs: 50 },
    );
    await completeDirect(p0, prompt(prefix("lc-moved", 480), 0));
    await waitIndexMatchesTruth(gw, pods);
    await waitPodSet(gw, pods);
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
    await waitPodSet(gw, pods);
    for (let i = 0; i < 3; i++) {
      const r = await gw.complete(DEFAULT_MODEL, prompt(sys[i], 900 + i));
      assertOk(r, `request ${i} at scale 1`);
      assert.equal(r.pod, pods[0].name);
    }
    await waitIndexMatchesTruth(gw, pods);
  });
});
