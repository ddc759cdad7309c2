import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { KubernetesSource } from "../../../src/discovery/kubernetes.ts";
import { podInfoFromPod } from "../../../src/discovery/kubernetes-pods.ts";
import { PodSet } from "../../../src/discovery/pod-set.ts";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import {
  type FakeKubeApi,
  makePod,
  parseLabelSelector,
  selectorMatches,
  startFakeKubeApi,
} from "../../helpers/fake-kube-api.ts";

const SELECTOR = parseLabelSelector("model.aibrix.ai/kv-events-enabled=true");
const NAMES = ["p0", "p1", "p2", "p3"];
const NAMESPACES = ["a", "b"];

type Op =
  | { op: "upsert"; ns: string; name: string; ip: number; ready: boolean; selected: boolean; model: boolean }
  | { op: "ready"; ns: string; name: string; ready: boolean }
  | { op: "ip"; ns: string; name: string; ip: number }
  | { op: "relabel"; ns: string; name: string; selected: boolean }
  | { op: "terminating"; ns: string; name: string }
  | { op: "delete"; ns: string; name: string }
  | { op: "drop" }
  | { op: "expire" }
  | { op: "fail" }
  | { op: "heal" };

const target = { ns: fc.constantFrom(...NAMESPACES), name: fc.constantFrom(...NAMES) };
const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("upsert" as const),
      ...target,
      ip: fc.integer({ min: 1, max: 3 }),
      ready: fc.boolean(),
      selected: fc.boolean(),
      model: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("ready" as const), ...target, ready: fc.boolean() }) },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant("ip" as const), ...target, ip: fc.integer({ min: 1, max: 3 }) }),
  },
  {
    weight: 2,
    arbitrary: fc.record({ op: fc.constant("relabel" as const), ...target, selected: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("terminating" as const), ...target }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("delete" as const), ...target }) },
  { weight: 1, arbitrary: fc.constant({ op: "drop" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "expire" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "fail" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "heal" as const }) },
);

async function apply(api: FakeKubeApi, o: Op): Promise<void> {
  const exists = "name" in o && api.getPod(o.ns, o.name) !== undefined;
  const ip = (n: number, name: string) => `10.${NAMES.indexOf(name)}.0.${n}`;
  switch (o.op) {
    case "upsert":
      api.upsertPod(
        o.ns,
        makePod({
          namespace: o.ns,
          name: o.name,
          ip: ip(o.ip, o.name),
          ready: o.ready,
          kvEvents: o.selected,
          model: o.model ? `model-${o.ns}` : undefined,
        }),
      );
      break;
    case "ready":
      if (exists) api.setPodReady(o.ns, o.name, o.ready);
      break;
    case "ip":
      if (exists) api.setPodIP(o.ns, o.name, ip(o.ip, o.name));
      break;
    case "relabel":
      if (exists)
        api.setPodLabels(o.ns, o.name, { "model.aibrix.ai/kv-events-enabled": o.selected ? "true" : null });
      break;
    case "terminating":
      if (exists) api.markTerminating(o.ns, o.name);
      break;
    case "delete":
      api.deletePod(o.ns, o.name);
      break;
    case "drop":
      api.dropWatches();
      break;
    case "expire":
      api.expireWatches();
      break;
    case "fail":
      api.failRequests(500);
      break;
    case "heal":
      await api.heal();
      break;
  }
}

/** What discovery must converge to: the selected, usable pods of the API server. */
function expected(api: FakeKubeApi): PodInfo[] {
  const out: PodInfo[] = [];
  for (const p of api.listPods()) {
    if (!selectorMatches(SELECTOR, p.metadata?.labels)) continue;
    try {
      const info = podInfoFromPod(p);
      if (info) out.push(info);
    } catch {
      // no model: ignored by discovery
    }
  }
  return out.sort((x, y) => (x.name < y.name ? -1 : 1));
}

test("property: through random pod changes, drops, 410s and outages, discovery converges to the API's pods", async (t) => {
  const api = await startFakeKubeApi({ bookmarkIntervalMs: 100 });
  const src = new KubernetesSource({
    kubeConfig: api.kubeConfig(),
    logger: silentLogger(),
    listTimeoutMs: 500,
    backoffMinMs: 10,
    backoffMaxMs: 100,
    watchRestartMaxDelayMs: 50,
    resyncMs: 0,
  });
  const set = new PodSet();
  // the routable set the router sees must always be a subset of the known set
  set.onChange((pods) => {
    for (const p of pods.values()) assert.ok(p.http.startsWith("http://10."));
  });
  t.after(async () => {
    await src.stop();
    await api.close();
  });
  await src.start(set.handler);
  await fc.assert(
    fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 15 }), async (ops) => {
      let failing = false;
      for (const o of ops) {
        const before = set.pods();
        await apply(api, o);
        if (o.op === "fail") failing = true;
        if (o.op === "heal") failing = false;
        // while the API fails, the set never shrinks to nothing because of the outage
        if (failing && before.length > 0) assert.ok(set.size > 0 || expected(api).length === 0);
      }
      await api.heal();
      await waitFor(
        "discovery to converge to the API server's pods",
        () => !src.degraded() && JSON.stringify(set.pods()) === JSON.stringify(expected(api)),
        {
          timeoutMs: 10_000,
          describe: () => ({ ops, got: set.pods(), want: expected(api), degraded: src.degraded() }),
        },
      );
      assert.deepEqual(
        set.routable().map((p) => p.name),
        expected(api)
          .filter((p) => p.ready)
          .map((p) => p.name),
      );
    }),
    { numRuns: 30 },
  );
});
