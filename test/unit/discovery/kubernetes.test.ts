import assert from "node:assert/strict";
import { test } from "node:test";
import { Registry } from "prom-client";
import { createDiscoverySource } from "../../../src/discovery/index.ts";
import {
  KubernetesSource,
  type KubernetesSourceOptions,
  loadKubeConfig,
} from "../../../src/discovery/kubernetes.ts";
import { podInfoFromPod } from "../../../src/discovery/kubernetes-pods.ts";
import { PodSet } from "../../../src/discovery/pod-set.ts";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import {
  type FakeKubeApi,
  type FakeKubeApiOptions,
  makePod,
  startFakeKubeApi,
} from "../../helpers/fake-kube-api.ts";

interface Ctx {
  api: FakeKubeApi;
  src: KubernetesSource;
  set: PodSet;
  registry: Registry;
  changes: () => number;
}

async function setup(
  t: { after(fn: () => Promise<void> | void): void },
  srcOpts: Partial<KubernetesSourceOptions> = {},
  apiOpts: FakeKubeApiOptions = {},
  before?: (api: FakeKubeApi) => void,
): Promise<Ctx> {
  const api = await startFakeKubeApi({ bookmarkIntervalMs: 100, ...apiOpts });
  before?.(api);
  const registry = new Registry();
  const src = new KubernetesSource({
    kubeconfig: api.kubeconfigPath(),
    registry,
    logger: silentLogger(),
    listTimeoutMs: 400,
    watchIdleTimeoutMs: 2000,
    backoffMinMs: 20,
    backoffMaxMs: 150,
    resyncMs: 0,
    ...srcOpts,
  });
  const set = new PodSet();
  let n = 0;
  set.onChange(() => n++);
  t.after(async () => {
    await src.stop();
    await api.heal();
    // every watch the source opened is closed by stop()
    await waitFor("no watch left open after stop", () => api.activeWatches() === 0);
    await api.close();
  });
  await src.start(set.handler);
  await waitFor("the informer's watch", () => api.activeWatches() > 0);
  return { api, src, set, registry, changes: () => n };
}

async function metric(reg: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = (await reg.getMetricsAsJSON()).find((x) => x.name === name);
  let sum = 0;
  for (const v of m?.values ?? []) {
    if (Object.entries(labels).every(([k, val]) => v.labels[k] === val)) sum += v.value;
  }
  return sum;
}

const names = (pods: PodInfo[]) => pods.map((p) => p.name);

function until(ctx: Ctx, what: string, cond: () => boolean): Promise<unknown> {
  return waitFor(what, cond, {
    timeoutMs: 8000,
    describe: () => ({ pods: ctx.set.pods(), degraded: ctx.src.degraded(), counts: ctx.api.counts() }),
  });
}

test("podInfoFromPod: labels, annotations, ports, readiness", () => {
  const p = makePod({
    namespace: "llm",
    name: "e0",
    model: "Qwen/Qwen3-0.6B",
    ip: "10.1.2.3",
    loraId: "sql",
    loraAdapters: ["chat", "sql"],
    httpPort: 8080,
    eventsPort: 6000,
    replayPort: "none",
    dataParallelSize: 4,
    blockSize: 32,
  });
  assert.deepEqual(podInfoFromPod(p), {
    name: "llm/e0",
    model: "Qwen/Qwen3-0.6B",
    loras: ["sql", "chat"],
    http: "http://10.1.2.3:8080",
    events: "tcp://10.1.2.3:6000",
    replay: null,
    dataParallelSize: 4,
    ready: true,
    blockSize: 32,
  });
  // defaults, IPv6, model from the annotation
  const v6 = makePod({ name: "e1", ip: "fd00::5", annotations: { "model.aibrix.ai/name": "m" } });
  const i6 = podInfoFromPod(v6);
  assert.equal(i6?.http, "http://[fd00::5]:8000");
  assert.equal(i6?.events, "tcp://[fd00::5]:5557");
  assert.equal(i6?.replay, "tcp://[fd00::5]:5558");
  assert.equal(i6?.name, "default/e1");
  // pending (no IP): nothing to subscribe to
  assert.equal(podInfoFromPod(makePod({ name: "e2", model: "m" })), null);
  // terminating: not routable
  const term = makePod({ name: "e3", model: "m", ip: "10.0.0.3" });
  term.metadata!.deletionTimestamp = new Date();
  assert.equal(podInfoFromPod(term)?.ready, false);
  // the annotation (exact served name) wins over the label (label-value syntax)
  const both = makePod({
    name: "e6",
    model: "qwen3-0-6b",
    ip: "10.0.0.6",
    annotations: { "model.aibrix.ai/name": "Qwen/Qwen3-0.6B" },
  });
  assert.equal(podInfoFromPod(both)?.model, "Qwen/Qwen3-0.6B");
  // no model, bad port
  assert.throws(() => podInfoFromPod(makePod({ name: "e4", ip: "10.0.0.4" })), /model\.aibrix\.ai\/name/);
  assert.throws(
    () =>
      podInfoFromPod(
        makePod({ name: "e5", model: "m", ip: "10.0.0.5", annotations: { "kvsync.io/http-port": "x" } }),
      ),
    /kvsync\.io\/http-port: bad port/,
  );
});

test("lifecycle: add, ready flip, IP change, terminating, relabel, delete", async (t) => {
  const ctx = await setup(t, {}, {}, (api) => {
    api.upsertPod("ns1", makePod({ namespace: "ns1", name: "a", model: "m", ip: "10.0.0.1" }));
  });
  const { api, src, set } = ctx;
  assert.equal(src.degraded(), false);
  assert.deepEqual(names(set.pods()), ["ns1/a"]);
  assert.deepEqual(names(set.routable()), ["ns1/a"]);
  assert.ok(
    api.requests().some((r) => r.watch && r.query.allowWatchBookmarks === "true"),
    "bookmarks asked for",
  );
  assert.ok(
    api
      .requests()
      .some((r) => !r.watch && r.query.labelSelector === "model.aibrix.ai/kv-events-enabled=true"),
  );

  // add: pending first (no address: not known), then running and ready
  api.upsertPod("ns1", makePod({ namespace: "ns1", name: "b", model: "m" }));
  api.upsertPod("ns1", makePod({ namespace: "ns1", name: "x", model: "m", ip: "10.0.0.9", kvEvents: false }));
  api.setPodIP("ns1", "b", "10.0.0.2");
  await until(ctx, "b to be known (address, not Ready yet)", () => set.has("ns1/b"));
  assert.deepEqual(names(set.routable()), ["ns1/a"]);
  api.setPodReady("ns1", "b", true);
  await until(ctx, "b to be routable", () => set.routable().length === 2);
  assert.deepEqual(names(set.pods()), ["ns1/a", "ns1/b"], "the unlabelled pod x is not selected");
  assert.equal(set.get("ns1/b")?.events, "tcp://10.0.0.2:5557");

  // ready flip: known (stream kept) but not routable, then back
  api.setPodReady("ns1", "a", false);
  await until(ctx, "a not routable", () => set.get("ns1/a")?.ready === false);
  assert.deepEqual(names(set.pods()), ["ns1/a", "ns1/b"]);
  assert.deepEqual(names(set.routable()), ["ns1/b"]);
  api.setPodReady("ns1", "a", true);
  await until(ctx, "a routable again", () => set.get("ns1/a")?.ready === true);

  // IP change: same name, new endpoints
  const seen: string[] = [];
  set.onChange((_p, changes) => {
    for (const c of changes)
      if (c.type === "updated" && c.endpointsChanged) seen.push(`${c.name}:${c.pod.events}`);
  });
  api.setPodIP("ns1", "a", "10.0.0.11");
  await until(ctx, "a to move", () => set.get("ns1/a")?.http === "http://10.0.0.11:8000");
  assert.deepEqual(seen, ["ns1/a:tcp://10.0.0.11:5557"]);
  assert.equal(set.get("ns1/a")?.replay, "tcp://10.0.0.11:5558");

  // terminating: not routable, still known until deleted
  api.markTerminating("ns1", "b");
  await until(ctx, "b not routable", () => set.get("ns1/b")?.ready === false);
  assert.deepEqual(names(set.pods()), ["ns1/a", "ns1/b"]);

  // relabel: leaves the selector -> delete; comes back -> add
  api.setPodLabels("ns1", "a", { "model.aibrix.ai/kv-events-enabled": "false" });
  await until(ctx, "a to leave", () => !set.has("ns1/a"));
  api.setPodLabels("ns1", "a", { "model.aibrix.ai/kv-events-enabled": "true" });
  await until(ctx, "a to come back", () => set.get("ns1/a")?.ready === true);

  // model/adapter change through labels/annotations
  api.patchPod("ns1", "a", (p) => {
    p.metadata!.annotations = { ...p.metadata!.annotations, "kvsync.io/lora-adapters": "l1,l2" };
  });
  await until(ctx, "adapters", () => set.get("ns1/a")?.loras.join() === "l1,l2");

  // delete: gone at once
  api.deletePod("ns1", "b");
  await until(ctx, "b gone", () => !set.has("ns1/b"));
  assert.deepEqual(names(set.pods()), ["ns1/a"]);
  assert.deepEqual(names(src.pods()), ["ns1/a"]);
  assert.equal(await metric(ctx.registry, "kvsync_discovery_pods", { source: "kubernetes" }), 1);
  assert.equal(await metric(ctx.registry, "kvsync_discovery_degraded", { source: "kubernetes" }), 0);
  assert.equal(api.counts().lists, 1, "no relist was needed");
});

test("a pod without a model is ignored and counted; fixing it adds it", async (t) => {
  const ctx = await setup(t);
  ctx.api.upsertPod("default", makePod({ name: "nomodel", ip: "10.0.0.1" }));
  await waitFor(
    "invalid pod counted",
    async () =>
      (await metric(ctx.registry, "kvsync_discovery_errors_total", { reason: "invalid_pod" })) === 1,
  );
  assert.equal(ctx.set.size, 0);
  ctx.api.setPodLabels("default", "nomodel", { "model.aibrix.ai/name": "m" });
  await until(ctx, "fixed pod added", () => ctx.set.has("default/nomodel"));
});

test("namespaces: one informer per listed namespace, others ignored", async (t) => {
  const ctx = await setup(t, { namespaces: ["a", "b"] }, {}, (api) => {
    api.upsertPod("a", makePod({ namespace: "a", name: "p", model: "m1", ip: "10.0.1.1" }));
    api.upsertPod("c", makePod({ namespace: "c", name: "p", model: "m1", ip: "10.0.3.1" }));
  });
  assert.deepEqual(names(ctx.set.pods()), ["a/p"]);
  ctx.api.upsertPod("b", makePod({ namespace: "b", name: "p", model: "m2", ip: "10.0.2.1" }));
  ctx.api.upsertPod("c", makePod({ namespace: "c", name: "q", model: "m2", ip: "10.0.3.2" }));
  await until(ctx, "b/p", () => ctx.set.has("b/p"));
  assert.deepEqual(names(ctx.set.pods()), ["a/p", "b/p"]);
  const paths = new Set(ctx.api.requests().map((r) => r.path));
  assert.ok(paths.has("/api/v1/namespaces/a/pods") && paths.has("/api/v1/namespaces/b/pods"));
  assert.ok(!paths.has("/api/v1/pods"));
});

for (const goneAs of ["event", "http"] as const) {
  test(`410 Gone (${goneAs}) relists; changes missed meanwhile are applied`, async (t) => {
    const ctx = await setup(t, {}, { goneAs }, (api) => {
      api.upsertPod("ns", makePod({ namespace: "ns", name: "keep", model: "m", ip: "10.0.0.1" }));
      api.upsertPod("ns", makePod({ namespace: "ns", name: "gone", model: "m", ip: "10.0.0.2" }));
    });
    const { api, set } = ctx;
    assert.equal(set.size, 2);
    // hold the informer's reconnect while the world changes, then forget the history
    api.setLatency(300);
    api.dropWatches();
    api.deletePod("ns", "gone");
    api.upsertPod("ns", makePod({ namespace: "ns", name: "new", model: "m", ip: "10.0.0.3" }));
    api.setPodIP("ns", "keep", "10.0.0.4");
    api.compact();
    api.setLatency(0);
    await until(ctx, "the relist to bring the new state", () => set.names().join() === "ns/keep,ns/new");
    assert.equal(set.get("ns/keep")?.http, "http://10.0.0.4:8000");
    assert.ok(api.counts().lists >= 2, "relisted");
    assert.equal(ctx.src.degraded(), false);
    // an ERROR 410 on a live watch also relists
    const lists = api.counts().lists;
    await waitFor("a live watch", () => api.activeWatches() === 1);
    api.expireWatches();
    await until(ctx, "relist after expiry", () => api.counts().lists > lists);
    api.deletePod("ns", "new");
    await until(ctx, "watch resumed after the relist", () => !set.has("ns/new"));
  });
}

test("a dropped watch resumes from its resourceVersion without a relist", async (t) => {
  const ctx = await setup(t, {}, {}, (api) => {
    api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  });
  const { api, set } = ctx;
  await waitFor("a live watch", () => api.activeWatches() === 1);
  assert.equal(api.dropWatches(), 1);
  api.upsertPod("ns", makePod({ namespace: "ns", name: "b", model: "m", ip: "10.0.0.2" }));
  api.deletePod("ns", "a");
  await until(ctx, "changes after the drop", () => set.names().join() === "ns/b");
  assert.equal(api.counts().lists, 1);
  const resumed = api.requests().filter((r) => r.watch);
  assert.ok(resumed.length >= 2);
  assert.ok(Number(resumed[resumed.length - 1].query.resourceVersion) > 0, "resumed with a resourceVersion");
  assert.equal(ctx.src.degraded(), false);
});

test("API errors (500): last set kept, degraded + metrics, recovery relists", async (t) => {
  const ctx = await setup(t, {}, {}, (api) => {
    api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
    api.upsertPod("ns", makePod({ namespace: "ns", name: "b", model: "m", ip: "10.0.0.2" }));
  });
  const { api, src, set, registry } = ctx;
  const before = set.pods();
  api.failRequests(500);
  await until(ctx, "degraded", () => src.degraded());
  assert.deepEqual(set.pods(), before, "the fleet is not emptied");
  assert.equal(await metric(registry, "kvsync_discovery_degraded", { source: "kubernetes" }), 1);
  await waitFor("retries with errors counted", async () => {
    return (await metric(registry, "kvsync_discovery_errors_total", { reason: "http_500" })) >= 2;
  });
  assert.deepEqual(set.pods(), before);
  assert.match(src.errors()[0].error, /HTTP 500/);
  // the world changes during the outage
  api.deletePod("ns", "b");
  api.setPodReady("ns", "a", false);
  await api.heal();
  await until(
    ctx,
    "recovered",
    () => !src.degraded() && !set.has("ns/b") && set.get("ns/a")?.ready === false,
  );
  assert.equal(await metric(registry, "kvsync_discovery_degraded", { source: "kubernetes" }), 0);
  assert.deepEqual(src.errors(), []);
});

test("API unreachable (connection refused): last set kept, degraded, reconnects", async (t) => {
  const ctx = await setup(t, {}, {}, (api) => {
    api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  });
  const { api, src, set } = ctx;
  await api.refuseConnections();
  await until(ctx, "degraded", () => src.degraded());
  await waitFor("several failed attempts", async () => {
    return (await metric(ctx.registry, "kvsync_discovery_errors_total", { reason: "unreachable" })) >= 2;
  });
  assert.deepEqual(names(set.pods()), ["ns/a"]);
  assert.deepEqual(names(set.routable()), ["ns/a"]);
  api.upsertPod("ns", makePod({ namespace: "ns", name: "b", model: "m", ip: "10.0.0.2" }));
  await api.heal();
  await until(ctx, "recovered with b", () => !src.degraded() && set.has("ns/b"));
});

test("slow API (responses slower than the timeout): last set kept, degraded; recovers", async (t) => {
  const ctx = await setup(t, { listTimeoutMs: 200 }, {}, (api) => {
    api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  });
  const { api, src, set, registry } = ctx;
  const changes = ctx.changes();
  api.setLatency(1000);
  api.dropWatches();
  await until(ctx, "degraded", () => src.degraded());
  await waitFor(
    "timeouts counted",
    async () => (await metric(registry, "kvsync_discovery_errors_total")) >= 1,
  );
  assert.deepEqual(names(set.pods()), ["ns/a"]);
  assert.equal(ctx.changes(), changes, "no change to the set during the outage");
  api.setLatency(0);
  await until(ctx, "recovered", () => !src.degraded());
  assert.deepEqual(names(set.pods()), ["ns/a"]);
});

test("API down at start: start resolves degraded with no pods, fills in on recovery", async (t) => {
  const api = await startFakeKubeApi();
  api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  api.failRequests(503);
  const src = new KubernetesSource({
    kubeConfig: api.kubeConfig(),
    logger: silentLogger(),
    startTimeoutMs: 300,
    backoffMinMs: 20,
    backoffMaxMs: 100,
    resyncMs: 0,
  });
  const set = new PodSet();
  t.after(async () => {
    await src.stop();
    await api.close();
  });
  await src.start(set.handler);
  assert.equal(src.degraded(), true);
  assert.equal(set.size, 0);
  await api.heal();
  await waitFor("pods after recovery", () => set.has("ns/a") && !src.degraded());
});

test("periodic resync relists without spurious changes", async (t) => {
  const ctx = await setup(t, { resyncMs: 100 }, {}, (api) => {
    api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  });
  const changes = ctx.changes();
  await waitFor("three resyncs", () => ctx.src.listCount >= 4 && ctx.api.counts().lists >= 4);
  assert.equal(ctx.changes(), changes);
  assert.deepEqual(names(ctx.set.pods()), ["ns/a"]);
  assert.equal(ctx.src.degraded(), false);
  // old informers' watches are closed (a leak would keep several open)
  await waitFor("exactly one watch open", () => ctx.api.activeWatches() === 1, {
    describe: () => ctx.api.activeWatches(),
  });
  // stopping closes every watch
  await ctx.src.stop();
  await waitFor("no watch left after stop", () => ctx.api.activeWatches() === 0);
});

test("bad credentials are an outage, not a crash", async (t) => {
  const api = await startFakeKubeApi({ token: "right" });
  const kc = api.kubeConfig();
  kc.users[0] = { ...kc.users[0], token: "wrong" } as (typeof kc.users)[0];
  const registry = new Registry();
  const src = new KubernetesSource({
    kubeConfig: kc,
    registry,
    logger: silentLogger(),
    startTimeoutMs: 300,
    backoffMinMs: 20,
    backoffMaxMs: 50,
  });
  t.after(async () => {
    await src.stop();
    await api.close();
  });
  await src.start(() => {});
  assert.equal(src.degraded(), true);
  await waitFor(
    "401 counted",
    async () => (await metric(registry, "kvsync_discovery_errors_total", { reason: "http_401" })) >= 1,
  );
});

test("createDiscoverySource --discovery kubernetes with --kubeconfig and --namespace", async (t) => {
  const api = await startFakeKubeApi();
  api.upsertPod("x", makePod({ namespace: "x", name: "p", model: "m", ip: "10.0.0.1" }));
  api.upsertPod("y", makePod({ namespace: "y", name: "p", model: "m", ip: "10.0.0.2" }));
  const src = await createDiscoverySource({
    discovery: "kubernetes",
    kubeconfig: api.kubeconfigPath(),
    namespaces: ["x"],
    logger: silentLogger(),
  });
  const set = new PodSet();
  t.after(async () => {
    await src.stop();
    await api.close();
  });
  await src.start(set.handler);
  assert.equal(src.kind, "kubernetes");
  assert.deepEqual(set.names(), ["x/p"]);
});

test("lists work but watches fail: backoff grows instead of a relist storm, set kept", async (t) => {
  const api = await startFakeKubeApi();
  api.upsertPod("ns", makePod({ namespace: "ns", name: "a", model: "m", ip: "10.0.0.1" }));
  const registry = new Registry();
  const src = new KubernetesSource({
    kubeConfig: api.kubeConfig(),
    registry,
    logger: silentLogger(),
    backoffMinMs: 20,
    backoffMaxMs: 5000,
    resyncMs: 0,
  });
  const set = new PodSet();
  t.after(async () => {
    await src.stop();
    await api.close();
  });
  await src.start(set.handler);
  // watches now fail (HTTP 500 on the watch endpoint only); lists still answer
  api.failWatchRequests(500);
  api.dropWatches();
  const start = Date.now();
  await waitFor("six failed watches", async () => {
    return (await metric(registry, "kvsync_discovery_errors_total", { reason: "http_500" })) >= 6;
  });
  // 20 + 40 + 80 + 160 + 320 ms of backoff at least (with jitter >= 0.8x) between the attempts
  assert.ok(Date.now() - start >= 0.8 * 620, `backoff too short: ${Date.now() - start} ms`);
  assert.ok(api.counts().lists <= 8, `relist storm: ${api.counts().lists} lists`);
  assert.deepEqual(set.names(), ["ns/a"]);
  api.failWatchRequests(null);
  await waitFor("a live watch again", () => api.activeWatches() === 1);
});

test("loadKubeConfig: an explicit file, else $KUBECONFIG", async (t) => {
  const api = await startFakeKubeApi();
  t.after(() => api.close());
  const file = api.kubeconfigPath();
  assert.equal(loadKubeConfig(file).getCurrentCluster()?.server, api.url);
  const saved = process.env.KUBECONFIG;
  process.env.KUBECONFIG = file;
  t.after(() => {
    if (saved === undefined) delete process.env.KUBECONFIG;
    else process.env.KUBECONFIG = saved;
  });
  assert.equal(loadKubeConfig().getCurrentCluster()?.server, api.url);
  assert.throws(() => loadKubeConfig("/nonexistent/kubeconfig"));
});
