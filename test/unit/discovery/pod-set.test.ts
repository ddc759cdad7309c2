import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { type PodChange, PodSet } from "../../../src/discovery/pod-set.ts";
import type { DiscoveryEvent, PodInfo } from "../../../src/discovery/types.ts";

function pod(name: string, over: Partial<PodInfo> = {}): PodInfo {
  return {
    name,
    model: "m",
    loras: [],
    http: `http://10.0.0.1:8000`,
    events: "tcp://10.0.0.1:5557",
    replay: "tcp://10.0.0.1:5558",
    dataParallelSize: 1,
    ready: true,
    ...over,
  };
}

test("upsert, flag change, endpoint change, delete and sync produce the right changes", () => {
  const set = new PodSet();
  const seen: Array<{ names: string[]; changes: readonly PodChange[] }> = [];
  set.onChange((pods, changes) => seen.push({ names: [...pods.keys()].sort(), changes }));

  assert.deepEqual(
    set.apply({ type: "upsert", pod: pod("a") }).map((c) => c.type),
    ["added"],
  );
  // identical upsert: nothing
  assert.equal(set.apply({ type: "upsert", pod: pod("a") }).length, 0);
  const notReady = set.apply({ type: "upsert", pod: pod("a", { ready: false }) });
  assert.equal(notReady.length, 1);
  assert.equal(notReady[0].type, "updated");
  assert.equal(notReady[0].type === "updated" && notReady[0].endpointsChanged, false);
  assert.deepEqual(set.routable(), []);
  assert.deepEqual(set.names(), ["a"]);

  const moved = set.apply({
    type: "upsert",
    pod: pod("a", { ready: true, http: "http://10.0.0.2:8000", events: "tcp://10.0.0.2:5557" }),
  });
  assert.equal(moved[0].type === "updated" && moved[0].endpointsChanged, true);
  assert.equal(moved[0].type === "updated" && moved[0].previous.events, "tcp://10.0.0.1:5557");

  set.apply({ type: "upsert", pod: pod("b") });
  const sync = set.apply({ type: "sync", pods: [pod("b"), pod("c")] });
  assert.deepEqual(
    sync.map((c) => `${c.type}:${c.name}`),
    ["removed:a", "added:c"],
  );
  assert.deepEqual(set.names(), ["b", "c"]);
  assert.equal(set.apply({ type: "delete", name: "zzz" }).length, 0);
  assert.deepEqual(
    set.apply({ type: "delete", name: "b" }).map((c) => c.type),
    ["removed"],
  );
  // listeners were called once per effective event, with the set after the change
  assert.deepEqual(
    seen.map((s) => s.names),
    [["a"], ["a"], ["a"], ["a", "b"], ["b", "c"], ["c"]],
  );
});

test("pods handed out are copies: mutating the input does not change the set", () => {
  const set = new PodSet();
  const p = pod("a", { loras: ["x"] });
  set.apply({ type: "upsert", pod: p });
  p.loras.push("y");
  p.ready = false;
  assert.deepEqual(set.get("a")?.loras, ["x"]);
  assert.equal(set.get("a")?.ready, true);
  assert.throws(() => {
    (set.get("a") as PodInfo).ready = false;
  });
});

test("unsubscribe stops notifications", () => {
  const set = new PodSet();
  let calls = 0;
  const off = set.onChange(() => calls++);
  set.apply({ type: "upsert", pod: pod("a") });
  off();
  set.apply({ type: "upsert", pod: pod("b") });
  assert.equal(calls, 1);
});

test("property: the set equals a model map, and replaying the changes rebuilds it", () => {
  const names = ["a", "b", "c", "d"];
  const podArb = fc.record({
    name: fc.constantFrom(...names),
    ip: fc.integer({ min: 1, max: 3 }),
    ready: fc.boolean(),
    lora: fc.constantFrom<string[]>([], ["x"], ["x", "y"]),
  });
  const evArb: fc.Arbitrary<DiscoveryEvent> = fc.oneof(
    podArb.map((p) => ({
      type: "upsert" as const,
      pod: pod(p.name, { http: `http://10.0.0.${p.ip}:8000`, ready: p.ready, loras: p.lora }),
    })),
    fc.constantFrom(...names).map((name) => ({ type: "delete" as const, name })),
    fc.uniqueArray(podArb, { selector: (p) => p.name, maxLength: 4 }).map((ps) => ({
      type: "sync" as const,
      pods: ps.map((p) => pod(p.name, { http: `http://10.0.0.${p.ip}:8000`, ready: p.ready, loras: p.lora })),
    })),
  );
  fc.assert(
    fc.property(fc.array(evArb, { maxLength: 40 }), (events) => {
      const set = new PodSet();
      const model = new Map<string, PodInfo>();
      const mirror = new Map<string, PodInfo>();
      set.onChange((_pods, changes) => {
        for (const c of changes) {
          if (c.type === "removed") {
            assert.ok(mirror.has(c.name), `removed unknown ${c.name}`);
            mirror.delete(c.name);
          } else if (c.type === "added") {
            assert.ok(!mirror.has(c.name), `added twice ${c.name}`);
            mirror.set(c.name, c.pod);
          } else {
            assert.deepEqual(mirror.get(c.name), c.previous);
            assert.notDeepEqual(c.previous, c.pod);
            assert.equal(c.endpointsChanged, c.previous.http !== c.pod.http);
            mirror.set(c.name, c.pod);
          }
        }
      });
      for (const ev of events) {
        set.apply(ev);
        if (ev.type === "upsert") model.set(ev.pod.name, ev.pod);
        else if (ev.type === "delete") model.delete(ev.name);
        else {
          model.clear();
          for (const p of ev.pods) model.set(p.name, p);
        }
        const expect = [...model.values()].sort((x, y) => x.name.localeCompare(y.name));
        assert.deepEqual(set.pods(), expect);
        assert.deepEqual(
          set.routable(),
          expect.filter((p) => p.ready),
        );
        assert.deepEqual(
          [...mirror.values()].sort((x, y) => x.name.localeCompare(y.name)),
          expect,
        );
      }
    }),
    { numRuns: 300 },
  );
});
