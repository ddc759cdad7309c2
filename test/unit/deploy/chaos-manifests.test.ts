/**
 * deploy/chaos/: one Chaos Mesh resource per experiment of the chaos plan (issue 13), each
 * - written only with fields Chaos Mesh knows, of the right types and enum values, and obeying
 *   the rules its admission webhook adds (test/fixtures/chaos-mesh/v2.8.3.json);
 * - selecting the workload it is meant for (the engines the gateway discovers, or the gateway) in
 *   the Kind overlay as kustomize renders it, in that overlay's namespace;
 * - with the plan's parameters and a bounded window of 10-30 s.
 */
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { DEFAULT_LABEL_SELECTOR } from "../../../src/discovery/index.ts";
import { type Obj, parseYamlFile, renderKustomization } from "../../helpers/deploy-manifests.ts";
import { parseLabelSelector, selectorMatches } from "../../helpers/fake-kube-api.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const deploy = join(root, "deploy");
const chaosDir = join(deploy, "chaos");
const facts = JSON.parse(readFileSync(join(root, "test/fixtures/chaos-mesh/v2.8.3.json"), "utf8"));

// ------------------------------------------------------------------ Chaos Mesh's schema, as facts

interface Schema {
  type: string;
  enum?: unknown[];
  pattern?: string;
  minimum?: number;
  maximum?: number;
  required?: string[];
  properties?: Record<string, Schema>;
  additionalProperties?: Schema;
  items?: Schema;
  $ref?: string;
}

/** Every way `v` breaks `schema` (unknown field, wrong type, enum, pattern, bound, missing). */
function schemaErrors(v: unknown, schema: Schema, path: string): string[] {
  if (schema.$ref) return schemaErrors(v, facts.definitions[schema.$ref], path);
  const errs: string[] = [];
  const t = schema.type;
  const isObj = typeof v === "object" && v !== null && !Array.isArray(v);
  if (t === "object" && !isObj) return [`${path}: expected an object`];
  if (t === "array" && !Array.isArray(v)) return [`${path}: expected an array`];
  if (t === "string" && typeof v !== "string")
    return [`${path}: expected a string, got ${JSON.stringify(v)}`];
  if (t === "integer" && !Number.isInteger(v)) return [`${path}: expected an integer`];
  if (t === "boolean" && typeof v !== "boolean") return [`${path}: expected a boolean`];
  if (schema.enum && !schema.enum.includes(v))
    errs.push(`${path}: ${String(v)} not in ${schema.enum.join("|")}`);
  if (schema.pattern && !new RegExp(schema.pattern).test(v as string))
    errs.push(`${path}: ${String(v)} does not match ${schema.pattern}`);
  if (schema.minimum !== undefined && (v as number) < schema.minimum) errs.push(`${path}: below minimum`);
  if (schema.maximum !== undefined && (v as number) > schema.maximum) errs.push(`${path}: above maximum`);
  if (Array.isArray(v) && schema.items) {
    for (const [i, x] of v.entries()) errs.push(...schemaErrors(x, schema.items, `${path}[${i}]`));
  }
  if (isObj) {
    const o = v as Obj;
    for (const r of schema.required ?? []) if (!(r in o)) errs.push(`${path}.${r}: required`);
    for (const [k, x] of Object.entries(o)) {
      const sub = schema.properties?.[k] ?? schema.additionalProperties;
      if (!sub) errs.push(`${path}.${k}: unknown field`);
      else errs.push(...schemaErrors(x, sub, `${path}.${k}`));
    }
  }
  return errs;
}

const GO_DURATION = /^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$/;
const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1e3, m: 60e3, h: 3600e3 };
/** Go's time.ParseDuration, in milliseconds. */
function goDurationMs(s: string): number {
  assert.match(s, GO_DURATION, `${s} is not a Go duration`);
  const sign = s.startsWith("-") ? -1 : 1;
  let ms = 0;
  for (const m of s.matchAll(/(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)/g)) ms += Number(m[1]) * UNIT_MS[m[2]];
  return sign * ms;
}

/** The rules Chaos Mesh's webhook checks beyond the CRD schema (fixture's `webhook` section). */
function webhookErrors(o: Obj): string[] {
  const errs: string[] = [];
  const s = o.spec;
  const wh = facts.webhook;
  const duration = (p: string, v: unknown) => {
    if (v !== undefined && !GO_DURATION.test(String(v))) errs.push(`${p}: ${String(v)} is not a Go duration`);
  };
  const floatStr = (p: string, v: unknown) => {
    if (v !== undefined && !/^\d+(\.\d+)?$/.test(String(v))) errs.push(`${p}: ${String(v)} is not a number`);
  };
  duration("duration", s.duration);
  for (const sel of [s, s.target].filter(Boolean)) {
    if (wh.modesNeedingValue.includes(sel.mode) && !sel.value) errs.push(`mode ${sel.mode} needs a value`);
  }
  if (o.kind === "NetworkChaos") {
    duration("delay.latency", s.delay?.latency);
    duration("delay.jitter", s.delay?.jitter);
    for (const a of ["loss", "corrupt", "duplicate"]) {
      floatStr(`${a}.${a}`, s[a]?.[a]);
      floatStr(`${a}.correlation`, s[a]?.correlation);
    }
    floatStr("delay.correlation", s.delay?.correlation);
    const dir = s.direction ?? "to";
    if (s.action !== "partition" && dir !== "to" && (!s.target || s.externalTargets))
      errs.push(`direction ${dir} needs a target and no externalTargets outside partition`);
    if (s.action !== "partition" && s.action !== "netem" && !s[s.action])
      errs.push(`${s.action} parameters missing`);
    if (s.bandwidth) {
      const unit = wh.rateUnits.find((u: string) => new RegExp(`^\\d+\\s*${u}$`, "i").test(s.bandwidth.rate));
      if (!unit) errs.push(`bandwidth.rate ${s.bandwidth.rate}: unknown unit`);
    }
  }
  if (o.kind === "StressChaos") {
    if (!s.stressors && !s.stressngStressors) errs.push("missing stressors");
    for (const [name, st] of Object.entries<Obj>(s.stressors ?? {}))
      if (!(st.workers > 0 && st.workers <= 8192)) errs.push(`stressors.${name}.workers`);
    const size = s.stressors?.memory?.size;
    if (size !== undefined && !/^(\d+(\.\d+)?\s*(B|[KMGTP]i?B?)?|\d{1,3}%)$/i.test(size))
      errs.push(`memory size ${size}`);
  }
  if (o.kind === "IOChaos") {
    duration("delay", s.delay);
    if (s.action === "latency" && !s.delay) errs.push("latency needs a delay");
    if (s.percent !== undefined && !(s.percent >= 0 && s.percent <= 100)) errs.push("percent");
  }
  if (o.kind === "TimeChaos") duration("timeOffset", s.timeOffset);
  if (o.kind === "PodChaos" && s.action === "pod-failure" && !s.duration)
    errs.push("pod-failure needs a duration");
  return errs;
}

function chaosErrors(o: Obj): string[] {
  const kind = facts.kinds[o.kind];
  if (!kind) return [`kind ${o.kind} is not a Chaos Mesh experiment kvsync knows`];
  const errs: string[] = [];
  if (o.apiVersion !== facts.apiVersion) errs.push(`apiVersion ${o.apiVersion}`);
  for (const k of Object.keys(o))
    if (!["apiVersion", "kind", "metadata", "spec"].includes(k)) errs.push(`${k}: unknown`);
  for (const k of Object.keys(o.metadata ?? {}))
    if (!["name", "namespace", "labels", "annotations"].includes(k)) errs.push(`metadata.${k}: unexpected`);
  if (!o.metadata?.name) errs.push("metadata.name missing");
  errs.push(...schemaErrors(o.spec, kind.spec, "spec"));
  if (errs.length === 0) errs.push(...webhookErrors(o));
  return errs;
}

// ------------------------------------------------------------------ deploy/ as the Kind overlay renders it

const rendered = renderKustomization(join(deploy, "kind"));
const kindConfig = parseYamlFile(join(deploy, "kind/kind-config.yaml"))[0];
const namespaceOf = (kind: string, name: string) =>
  rendered.find((o) => o.kind === kind && o.metadata.name === name)?.metadata.namespace;
const workloads = rendered.filter((o) => o.kind === "Deployment");
const gatewayDep = workloads.find((d) => d.metadata.name === "kvsync-gateway");
const discovery = parseLabelSelector(DEFAULT_LABEL_SELECTOR);
const engineDeps = workloads.filter((d) => selectorMatches(discovery, d.spec.template.metadata.labels));
const podCount = (deps: Obj[]) => deps.reduce((n, d) => n + (d.spec.replicas ?? 1), 0);
const overlayNs: string = gatewayDep?.metadata.namespace;

/** The Deployments whose pods a Chaos Mesh selector picks. */
function selected(sel: Obj): Obj[] {
  for (const k of Object.keys(sel))
    assert.ok(
      ["namespaces", "labelSelectors"].includes(k),
      `selector.${k}: only namespaces and labels are checked here`,
    );
  return workloads.filter(
    (d) =>
      (sel.namespaces ?? []).includes(d.metadata.namespace) &&
      Object.entries<string>(sel.labelSelectors ?? {}).every(
        ([k, v]) => d.spec.template.metadata.labels?.[k] === v,
      ),
  );
}

/** How many pods a mode picks out of n (Chaos Mesh rounds percentages up). */
function picked(sel: Obj, n: number): number {
  switch (sel.mode) {
    case "one":
      return Math.min(1, n);
    case "all":
      return n;
    case "fixed":
      return Math.min(Number(sel.value), n);
    case "fixed-percent":
    case "random-max-percent":
      return Math.ceil((n * Number(sel.value)) / 100);
    default:
      throw new Error(`mode ${sel.mode}`);
  }
}

// ------------------------------------------------------------------ the plan's table

type Group = "engines" | "gateway";
interface Expected {
  kind: string;
  group: Group;
  target?: Group;
  /** at least one pod of the group stays unaffected (degradation, not outage) */
  partial?: boolean;
  check: (spec: Obj) => void;
}
const zmqTargets = (spec: Obj) => {
  const podSubnet = kindConfig.networking.podSubnet;
  const ports = engineDeps.flatMap((d) =>
    d.spec.template.spec.containers.flatMap((c: Obj) =>
      (c.ports ?? []).filter((p: Obj) => p.name !== "http").map((p: Obj) => p.containerPort),
    ),
  );
  assert.deepEqual([...new Set(ports)].sort(), [5557, 5558], "the engines' ZMQ ports");
  assert.deepEqual([...spec.externalTargets].sort(), [`${podSubnet}:5557`, `${podSubnet}:5558`]);
  assert.equal(spec.direction, "to", "ports match only as destination ports: the gateway's side");
};
const EXPERIMENTS: Record<string, Expected> = {
  partition: {
    kind: "NetworkChaos",
    group: "engines",
    target: "gateway",
    partial: true,
    check: (s) => {
      assert.equal(s.action, "partition");
      assert.equal(s.direction, "both");
    },
  },
  loss: {
    kind: "NetworkChaos",
    group: "engines",
    target: "gateway",
    check: (s) => {
      assert.equal(s.action, "loss");
      assert.deepEqual(s.loss, { loss: "50", correlation: "25" });
    },
  },
  delay: {
    kind: "NetworkChaos",
    group: "engines",
    target: "gateway",
    check: (s) => {
      assert.equal(s.action, "delay");
      assert.equal(goDurationMs(s.delay.latency), 500);
      assert.equal(goDurationMs(s.delay.jitter), 100);
    },
  },
  bandwidth: {
    kind: "NetworkChaos",
    group: "engines",
    target: "gateway",
    check: (s) => {
      assert.equal(s.action, "bandwidth");
      // 1 Mbit/s: tc's "mbit"; its "mbps" would be megabytes per second
      assert.equal(s.bandwidth.rate, "1mbit");
      assert.ok(s.bandwidth.buffer >= 1500, "the bucket holds a full-size packet");
      assert.ok(s.bandwidth.limit / 125_000 <= 1, "at most a second of queue at 1 Mbit/s");
    },
  },
  "pod-kill": {
    kind: "PodChaos",
    group: "engines",
    partial: true,
    check: (s) => {
      assert.equal(s.action, "pod-kill");
      assert.equal(s.mode, "one");
    },
  },
  "pod-failure": {
    kind: "PodChaos",
    group: "engines",
    partial: true,
    check: (s) => {
      assert.equal(s.action, "pod-failure");
      assert.equal(s.mode, "fixed-percent");
      assert.equal(s.value, "50");
    },
  },
  "stress-cpu": {
    kind: "StressChaos",
    group: "engines",
    check: (s) => assert.deepEqual(s.stressors, { cpu: { workers: 2, load: 80 } }),
  },
  "stress-memory": {
    kind: "StressChaos",
    group: "gateway",
    check: (s) => assert.deepEqual(s.stressors, { memory: { workers: 1, size: "512MB" } }),
  },
  "io-latency": {
    kind: "IOChaos",
    group: "gateway",
    check: (s) => {
      assert.equal(s.action, "latency");
      assert.equal(goDurationMs(s.delay), 100);
      assert.equal(s.percent, 50);
    },
  },
  "zmq-port-block": {
    kind: "NetworkChaos",
    group: "gateway",
    check: (s) => {
      assert.equal(s.action, "partition");
      zmqTargets(s);
    },
  },
  "zmq-corrupt": {
    kind: "NetworkChaos",
    group: "gateway",
    check: (s) => {
      assert.equal(s.action, "corrupt");
      assert.equal(s.corrupt.corrupt, "50");
      zmqTargets(s);
    },
  },
  "time-skew": {
    kind: "TimeChaos",
    group: "engines",
    partial: true,
    check: (s) => {
      assert.equal(goDurationMs(s.timeOffset), 30_000);
      assert.deepEqual(s.clockIds ?? ["CLOCK_REALTIME"], ["CLOCK_REALTIME"]);
    },
  },
  "api-delay": {
    kind: "NetworkChaos",
    group: "gateway",
    check: (s) => {
      assert.equal(s.action, "delay");
      assert.equal(goDurationMs(s.delay.latency), 2000);
      assert.equal(s.direction, "to");
      // the "kubernetes" Service: the first address of the service subnet, port 443
      const [net] = kindConfig.networking.serviceSubnet.split("/");
      const o = net.split(".").map(Number);
      assert.deepEqual(s.externalTargets, [`${o[0]}.${o[1]}.${o[2]}.${o[3] + 1}:443`]);
    },
  },
};

const files = readdirSync(chaosDir)
  .filter((f) => /\.ya?ml$/.test(f))
  .sort();
const experiments = files.map((f) => {
  const docs = parseYamlFile(join(chaosDir, f));
  assert.equal(docs.length, 1, `${f}: one resource per file`);
  return { file: f, obj: docs[0] };
});
const byName = new Map(experiments.map((e) => [e.obj.metadata?.labels?.["kvsync.io/chaos-experiment"], e]));

// ------------------------------------------------------------------ tests

test("the checker rejects what Chaos Mesh would reject", () => {
  const good = structuredClone(byName.get("delay")?.obj) as Obj;
  assert.deepEqual(chaosErrors(good), []);
  const bad = (mutate: (o: Obj) => void, expected: RegExp) => {
    const o = structuredClone(good);
    mutate(o);
    const errs = chaosErrors(o);
    assert.ok(
      errs.some((e) => expected.test(e)),
      `${expected} not in ${JSON.stringify(errs)}`,
    );
  };
  bad((o) => {
    o.spec.delay.latncy = "1s";
  }, /spec\.delay\.latncy: unknown field/);
  bad((o) => {
    o.spec.selector.labelSelector = {};
  }, /spec\.selector\.labelSelector: unknown field/);
  bad((o) => {
    o.spec.target.selector.pod = {};
  }, /spec\.target\.selector\.pod: unknown field/);
  bad((o) => {
    o.spec.action = "latency";
  }, /not in netem\|delay/);
  bad((o) => {
    o.spec.mode = "fixed-percent";
  }, /needs a value/);
  bad((o) => {
    o.spec.delay.latency = "500";
  }, /does not match/);
  bad((o) => {
    o.spec.duration = "20 seconds";
  }, /not a Go duration/);
  bad((o) => {
    delete o.spec.selector;
  }, /spec\.selector: required/);
  bad((o) => {
    o.spec.direction = "both";
    delete o.spec.target;
  }, /direction both needs a target/);
  bad((o) => {
    o.kind = "NetworkChaoss";
  }, /not a Chaos Mesh experiment/);
  const bw = structuredClone(byName.get("bandwidth")?.obj) as Obj;
  bw.spec.bandwidth.rate = "1mb";
  assert.ok(chaosErrors(bw).some((e) => /unknown unit/.test(e)));
  bw.spec.bandwidth.rate = "1mbit";
  bw.spec.bandwidth.limit = "62500";
  assert.ok(chaosErrors(bw).some((e) => /limit: expected an integer/.test(e)));
});

test("the Kind overlay renders the workloads the experiments select", () => {
  assert.ok(gatewayDep, "the gateway Deployment");
  assert.equal(overlayNs, "kvsync");
  assert.equal(namespaceOf("Namespace", "kvsync"), undefined, "the Namespace object itself has none");
  assert.deepEqual(engineDeps.map((d) => d.metadata.name).sort(), ["kvsync-mock-engine", "vllm-qwen3"]);
  assert.equal(podCount(engineDeps), 3, "the overlay runs three mock engines and no vLLM");
  assert.ok(
    kindConfig.networking?.podSubnet && kindConfig.networking?.serviceSubnet,
    "kind-config's subnets",
  );
});

test("one resource per experiment of the plan, each a known kind in a file of its own", () => {
  assert.equal(files.length, 13, `deploy/chaos has ${files.length} manifests: ${files.join(", ")}`);
  assert.deepEqual([...byName.keys()].sort(), Object.keys(EXPERIMENTS).sort());
  for (const [name, exp] of Object.entries(EXPERIMENTS)) {
    const e = byName.get(name);
    assert.equal(e?.obj.kind, exp.kind, `${name}: kind`);
  }
  const names = experiments.map((e) => e.obj.metadata.name);
  assert.equal(new Set(names).size, names.length, "resource names are unique");
});

test("every field is one Chaos Mesh v2.8.3 knows, with an allowed value", () => {
  for (const { file, obj } of experiments) assert.deepEqual(chaosErrors(obj), [], file);
});

test("selectors pick the intended workload of the Kind overlay, in its namespace", () => {
  const groups: Record<Group, Obj[]> = { engines: engineDeps, gateway: [gatewayDep as Obj] };
  const names = (deps: Obj[]) => deps.map((d) => d.metadata.name).sort();
  for (const [name, exp] of Object.entries(EXPERIMENTS)) {
    const { file, obj } = byName.get(name) as { file: string; obj: Obj };
    const s = obj.spec;
    assert.equal(obj.metadata.namespace, overlayNs, `${file}: namespace`);
    assert.deepEqual(s.selector.namespaces, [overlayNs], `${file}: selector namespace`);
    const sel = selected(s.selector);
    assert.deepEqual(names(sel), names(groups[exp.group]), `${file}: selects the ${exp.group}`);
    const n = podCount(sel);
    const k = picked(s, n);
    assert.ok(k >= 1, `${file}: picks no pod`);
    if (exp.partial) assert.ok(k < n, `${file}: picks ${k} of ${n} engines, none left healthy`);
    if (exp.target) {
      assert.deepEqual(s.target.selector.namespaces, [overlayNs], `${file}: target namespace`);
      assert.deepEqual(names(selected(s.target.selector)), names(groups[exp.target]), `${file}: target`);
    } else assert.equal(s.target, undefined, `${file}: no target`);
    // containers and volumes named by the experiment exist in every selected pod
    for (const d of sel) {
      const containers: Obj[] = d.spec.template.spec.containers;
      const chosen = s.containerNames
        ? containers.filter((c) => s.containerNames.includes(c.name))
        : containers;
      assert.equal(chosen.length, (s.containerNames ?? containers).length, `${file}: containerNames`);
      if (s.volumePath) {
        for (const c of chosen)
          assert.ok(
            (c.volumeMounts ?? []).some((m: Obj) => m.mountPath === s.volumePath),
            `${file}: ${s.volumePath} is not a volume of ${d.metadata.name}/${c.name}`,
          );
        assert.ok(s.path.startsWith(`${s.volumePath}/`), `${file}: path under volumePath`);
      }
    }
  }
});

test("parameters are the plan's, each held for a bounded window of 10-30 s", () => {
  for (const [name, exp] of Object.entries(EXPERIMENTS)) {
    const { file, obj } = byName.get(name) as { file: string; obj: Obj };
    const ms = goDurationMs(obj.spec.duration);
    assert.ok(ms >= 10_000 && ms <= 30_000, `${file}: duration ${obj.spec.duration}`);
    assert.doesNotThrow(
      () => exp.check(obj.spec),
      (err: unknown) => {
        throw new Error(`${file}: ${(err as Error).message}`);
      },
    );
  }
});

test("Go durations parse as Chaos Mesh reads them", () => {
  assert.equal(goDurationMs("1m30s"), 90_000);
  assert.equal(goDurationMs("1.5s"), 1500);
  assert.equal(goDurationMs("-5m"), -300_000);
  assert.throws(() => goDurationMs("30"));
});
