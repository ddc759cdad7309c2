import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { rename, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { Registry } from "prom-client";
import { createDiscoverySource } from "../../../src/discovery/index.ts";
import { PodSet } from "../../../src/discovery/pod-set.ts";
import {
  EnginesFileError,
  loadEnginesFile,
  parseEnginesFile,
  StaticFileSource,
} from "../../../src/discovery/static-file.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";

function tmp(t: { after(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), "kvsync-engines-"));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

const YAML_TWO = `
engines:
  - name: pod-a
    model: Qwen/Qwen3-0.6B
    http: http://127.0.0.1:8001
    events: tcp://127.0.0.1:5557
    replay: tcp://127.0.0.1:5558   # optional
  - name: pod-b
    model: Qwen/Qwen3-0.6B
    http: http://127.0.0.1:8002/
    events: tcp://127.0.0.1:5567
    loras: [sql-lora]
    dataParallelSize: 2
    ready: false
    blockSize: 16
`;

async function metric(reg: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await reg.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return v?.value ?? 0;
}

test("parses YAML with defaults and optional fields", () => {
  const pods = parseEnginesFile(YAML_TWO, "engines.yaml");
  assert.deepEqual(pods, [
    {
      name: "pod-a",
      model: "Qwen/Qwen3-0.6B",
      loras: [],
      http: "http://127.0.0.1:8001",
      events: "tcp://127.0.0.1:5557",
      replay: "tcp://127.0.0.1:5558",
      dataParallelSize: 1,
      ready: true,
    },
    {
      name: "pod-b",
      model: "Qwen/Qwen3-0.6B",
      loras: ["sql-lora"],
      http: "http://127.0.0.1:8002",
      events: "tcp://127.0.0.1:5567",
      replay: null,
      dataParallelSize: 2,
      ready: false,
      blockSize: 16,
    },
  ]);
});

test("parses JSON, and an empty list is a valid (empty) fleet", () => {
  const json = JSON.stringify({
    engines: [{ name: "x", model: "m", http: "https://e.example:443", events: null }],
  });
  const pods = parseEnginesFile(json, "/etc/kvsync/engines.json");
  assert.equal(pods[0].events, null);
  assert.equal(pods[0].replay, null);
  assert.deepEqual(parseEnginesFile("engines: []\n", "e.yaml"), []);
});

test("rejects bad files with a message naming file, entry and field", () => {
  const cases: Array<[string, RegExp, string | undefined]> = [
    ["", /e\.yaml: file is empty/, undefined],
    ["engines: [\n", /e\.yaml: cannot parse/, undefined],
    ["pods: []\n", /unknown top-level key "pods"/, undefined],
    ["engines: {}\n", /"engines" must be a list/, undefined],
    [
      "engines:\n  - name: a\n    http: http://h:1\n    events: null\n",
      /engines\[0\] \(a\) field "model": missing/,
      "model",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'ftp://h', events: null}\n",
      /engines\[0\] \(a\) field "http": expected a http:\/\/ or https:\/\/ URL/,
      "http",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: 'tcp://h'}\n",
      /field "events": no port/,
      "events",
    ],
    ["engines:\n  - {name: a, model: m, http: 'http://h:1'}\n", /field "events": missing/, "events"],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: null, dataParallelSize: 0}\n",
      /field "dataParallelSize": must be an integer from 1/,
      "dataParallelSize",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: null, replya: 'tcp://h:2'}\n",
      /field "replya": unknown field/,
      "replya",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: null}\n  - {name: a, model: m, http: 'http://h:2', events: null}\n",
      /engines\[1\] \(a\) field "name": duplicate name, already used by engines\[0\]/,
      "name",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: null, ready: 'yes'}\n",
      /field "ready"/,
      "ready",
    ],
    [
      "engines:\n  - {name: a, model: m, http: 'http://h:1', events: null, loras: [x, x]}\n",
      /duplicate adapter/,
      "loras",
    ],
    ["engines:\n  - 42\n", /engines\[0\]: entry must be a mapping/, undefined],
  ];
  for (const [text, re, field] of cases) {
    assert.throws(
      () => parseEnginesFile(text, "e.yaml"),
      (err: unknown) => {
        assert.ok(err instanceof EnginesFileError, `expected EnginesFileError for ${JSON.stringify(text)}`);
        assert.match(err.message, re);
        assert.equal(err.file, "e.yaml");
        assert.equal(err.field, field);
        return true;
      },
    );
  }
});

test("loadEnginesFile reports a missing file clearly", async (t) => {
  const dir = tmp(t);
  await assert.rejects(loadEnginesFile(join(dir, "nope.yaml")), /nope\.yaml: file not found/);
});

test("watched file: edits, bad files keep the last good set, rename-on-save, recovery", async (t) => {
  const dir = tmp(t);
  const file = join(dir, "engines.yaml");
  await writeFile(file, YAML_TWO);
  const registry = new Registry();
  const src = new StaticFileSource({
    file,
    debounceMs: 20,
    pollIntervalMs: 0,
    registry,
    logger: silentLogger(),
  });
  const set = new PodSet();
  await src.start(set.handler);
  t.after(() => src.stop());
  assert.equal(src.kind, "static");
  assert.deepEqual(set.names(), ["pod-a", "pod-b"]);
  assert.deepEqual(
    set.routable().map((p) => p.name),
    ["pod-a"],
  );
  assert.equal(src.degraded(), false);
  assert.equal(await metric(registry, "kvsync_discovery_pods", { source: "static" }), 2);

  // in-place edit: pod-b becomes ready, pod-c added
  await writeFile(
    file,
    YAML_TWO.replace("ready: false", "ready: true") +
      "  - {name: pod-c, model: m2, http: 'http://127.0.0.1:8003', events: 'tcp://127.0.0.1:5577'}\n",
  );
  await waitFor("pod-c to appear and pod-b to become routable", () => set.routable().length === 3, {
    describe: () => set.pods(),
  });

  // a broken file: error kept, last good set unchanged, degraded + counted
  const before = set.pods();
  await writeFile(file, "engines:\n  - {name: pod-a, model: m}\n");
  await waitFor("the bad file to be rejected", () => src.reloadFailures >= 1);
  assert.deepEqual(set.pods(), before);
  assert.equal(src.degraded(), true);
  assert.match(String(src.lastError?.message), /engines\.yaml: engines\[0\] \(pod-a\) field "http": missing/);
  assert.ok(
    (await metric(registry, "kvsync_discovery_reloads_total", { source: "static", result: "error" })) >= 1,
  );
  assert.equal(await metric(registry, "kvsync_discovery_degraded", { source: "static" }), 1);

  // deleted file (first half of some editors' save): still the last good set
  const failures = src.reloadFailures;
  await unlink(file);
  await waitFor("the missing file to be noticed", () => src.reloadFailures > failures);
  assert.deepEqual(set.pods(), before);

  // rename-on-save: write a temp file, rename it over the watched name
  const tmpFile = join(dir, ".engines.yaml.swp");
  await writeFile(
    tmpFile,
    "engines:\n  - {name: pod-z, model: m, http: 'http://127.0.0.1:9000', events: 'tcp://127.0.0.1:9001'}\n",
  );
  await rename(tmpFile, file);
  await waitFor("the renamed file to be loaded", () => set.names().join() === "pod-z", {
    describe: () => set.names(),
  });
  assert.equal(src.degraded(), false);
  assert.equal(src.lastError, null);
  assert.equal(await metric(registry, "kvsync_discovery_degraded", { source: "static" }), 0);

  // a second rename-on-save after the watcher saw a rename (inode replaced)
  await writeFile(
    tmpFile,
    "engines:\n  - {name: pod-y, model: m, http: 'http://127.0.0.1:9000', events: 'tcp://127.0.0.1:9001'}\n",
  );
  await rename(tmpFile, file);
  await waitFor("the second rename to be loaded", () => set.names().join() === "pod-y", {
    describe: () => set.names(),
  });
});

test("a bad file at start fails start with the clear error", async (t) => {
  const dir = tmp(t);
  const file = join(dir, "engines.json");
  await writeFile(file, '{"engines": [{"name": "a"}]}');
  const src = new StaticFileSource({ file, pollIntervalMs: 0, logger: silentLogger() });
  t.after(() => src.stop());
  await assert.rejects(
    src.start(() => {}),
    /engines\.json: engines\[0\] \(a\) field "model": missing/,
  );
});

test("the polling fallback picks up changes without fs events", async (t) => {
  const dir = tmp(t);
  const file = join(dir, "engines.yaml");
  await writeFile(file, "engines: []\n");
  const src = new StaticFileSource({ file, debounceMs: 10_000, pollIntervalMs: 30, logger: silentLogger() });
  const set = new PodSet();
  await src.start(set.handler);
  t.after(() => src.stop());
  await writeFile(file, "engines:\n  - {name: p, model: m, http: 'http://127.0.0.1:1', events: null}\n");
  await waitFor("poll to load the file", () => set.size === 1);
});

test("createDiscoverySource builds the static source from --engines", async (t) => {
  const dir = tmp(t);
  const file = join(dir, "engines.yaml");
  await writeFile(file, YAML_TWO);
  const src = await createDiscoverySource({ engines: file, logger: silentLogger() });
  assert.equal(src.kind, "static");
  const set = new PodSet();
  await src.start(set.handler);
  t.after(() => src.stop());
  assert.equal(set.size, 2);
  await assert.rejects(createDiscoverySource({ discovery: "static" }), /needs --engines/);
  await assert.rejects(createDiscoverySource({}), /no discovery configured/);
});
