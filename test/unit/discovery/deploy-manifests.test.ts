/**
 * deploy/: every manifest is valid against the Kubernetes API schemas (kubernetes-models), and
 * the files agree with each other (selectors, labels, ports, RBAC, kustomization), with the
 * discovery code (engine pods are selected and resolve to their container ports) and with the
 * metrics kvsync registers (Grafana dashboard).
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { accessSync, constants, existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import YAML from "yaml";
import { DEFAULT_LABEL_SELECTOR } from "../../../src/discovery/index.ts";
import { ANNOTATIONS, podInfoFromPod } from "../../../src/discovery/kubernetes-pods.ts";
import { podStreams } from "../../../src/events/stream-layout.ts";
import { type Obj, parseYamlFile, walk } from "../../helpers/deploy-manifests.ts";
import { parseLabelSelector, selectorMatches } from "../../helpers/fake-kube-api.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const deploy = join(root, "deploy");

interface Doc {
  file: string;
  obj: Obj;
}

const files = walk(deploy);
const yamlFiles = files.filter((f) => /\.ya?ml$/.test(f));

const isKustomization = (f: string) => f.endsWith("kustomization.yaml");
const isKindConfig = (o: Obj) => o.apiVersion === "kind.x-k8s.io/v1alpha4";

// deploy/chaos/ holds Chaos Mesh resources, which kubernetes-models has no schema for:
// test/unit/deploy/chaos-manifests.test.ts checks them against Chaos Mesh's own field names.
const isChaos = (f: string) => f.startsWith(join(deploy, "chaos"));
const k8sDocs: Doc[] = [];
for (const f of yamlFiles) {
  if (isKustomization(f) || isChaos(f)) continue;
  for (const obj of parseYamlFile(f)) if (!isKindConfig(obj)) k8sDocs.push({ file: f, obj });
}
const baseDocs = k8sDocs.filter((d) => d.file.startsWith(join(deploy, "base")));
const byKind = (kind: string) => baseDocs.filter((d) => d.obj.kind === kind).map((d) => d.obj);
const deployments = () => byKind("Deployment");
const find = (kind: string, name: string): Obj => {
  const o = baseDocs.find((d) => d.obj.kind === kind && d.obj.metadata?.name === name)?.obj;
  assert.ok(o, `no ${kind} ${name} in deploy/base`);
  return o;
};
const labelsMatch = (sel: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(sel).every(([k, v]) => labels?.[k] === v);
const containerPorts = (dep: Obj): Obj[] =>
  dep.spec.template.spec.containers.flatMap((c: Obj) => c.ports ?? []);
const argValue = (args: string[], flag: string): string | undefined => {
  const i = args.indexOf(flag);
  return i === -1 ? undefined : args[i + 1];
};

test("deploy/ holds the expected files", () => {
  for (const f of [
    "Dockerfile",
    "base/kustomization.yaml",
    "kind/kind-config.yaml",
    "kind/kustomization.yaml",
    "kind/up.sh",
    "grafana/kvsync-dashboard.json",
  ]) {
    assert.ok(existsSync(join(deploy, f)), `deploy/${f} missing`);
  }
  assert.ok(k8sDocs.length >= 9, `only ${k8sDocs.length} Kubernetes objects found`);
});

test("every manifest validates against the Kubernetes API schemas", async () => {
  for (const { file, obj } of k8sDocs) {
    const where = `${relative(root, file)} ${obj.kind}/${obj.metadata?.name}`;
    assert.equal(typeof obj.apiVersion, "string", `${where}: apiVersion`);
    assert.equal(typeof obj.kind, "string", `${where}: kind`);
    assert.ok(obj.metadata?.name, `${where}: metadata.name`);
    const mod = (await import(`kubernetes-models/${obj.apiVersion}`)) as Record<
      string,
      new (
        o: Obj,
      ) => { validate(): void }
    >;
    const Model = mod[obj.kind];
    assert.ok(Model, `${where}: no schema for ${obj.apiVersion} ${obj.kind}`);
    assert.doesNotThrow(
      () => new Model(obj).validate(),
      (err: unknown) => {
        throw new Error(`${where}: ${(err as Error).message}`);
      },
    );
  }
});

test("the schema validation really rejects a bad manifest", async () => {
  const { Deployment } = await import("kubernetes-models/apps/v1");
  const bad = structuredClone(find("Deployment", "kvsync-gateway"));
  bad.spec.template.spec.containers[0].ports[0].containerPort = "8080";
  assert.throws(() => new Deployment(bad).validate(), /containerPort must be integer/);
});

test("kustomizations list every file and reference what exists", () => {
  for (const f of yamlFiles.filter(isKustomization)) {
    const dir = dirname(f);
    const [k] = parseYamlFile(f);
    assert.equal(k.kind, "Kustomization");
    const resources: string[] = k.resources ?? [];
    for (const r of resources)
      assert.ok(existsSync(join(dir, r)), `${relative(root, f)}: missing resource ${r}`);
    const manifests = readdirSync(dir).filter(
      (n) =>
        /\.ya?ml$/.test(n) &&
        n !== "kustomization.yaml" &&
        !isKindConfig(parseYamlFile(join(dir, n))[0] ?? {}),
    );
    for (const m of manifests) assert.ok(resources.includes(m), `${relative(root, f)} does not list ${m}`);
    for (const p of k.patches ?? []) {
      const t = p.target;
      assert.ok(
        baseDocs.some((d) => d.obj.kind === t.kind && d.obj.metadata.name === t.name),
        `${relative(root, f)}: patch target ${t.kind}/${t.name} does not exist`,
      );
      for (const op of YAML.parse(p.patch)) assert.match(op.op, /^(add|replace|remove)$/);
    }
  }
  const base = parseYamlFile(join(deploy, "base/kustomization.yaml"))[0];
  for (const d of baseDocs) {
    if (d.obj.kind === "Namespace" || d.obj.kind.startsWith("Cluster")) continue;
    assert.equal(d.obj.metadata.namespace, base.namespace, `${d.obj.kind}/${d.obj.metadata.name} namespace`);
  }
  // every image the kustomization rewrites is used, and every kvsync image is covered
  const images = (base.images ?? []).map((i: Obj) => i.name);
  for (const dep of deployments()) {
    for (const c of dep.spec.template.spec.containers) {
      if (String(c.image).startsWith("kvsync")) assert.ok(images.includes(String(c.image).split(":")[0]));
    }
  }
});

test("deployments: selectors match their pod labels; probes use declared ports", () => {
  for (const dep of deployments()) {
    const labels = dep.spec.template.metadata.labels;
    assert.ok(labelsMatch(dep.spec.selector.matchLabels, labels), `${dep.metadata.name}: selector vs labels`);
    const names = new Set(containerPorts(dep).map((p) => p.name));
    const numbers = new Set(containerPorts(dep).map((p) => p.containerPort));
    for (const c of dep.spec.template.spec.containers) {
      for (const probe of ["readinessProbe", "livenessProbe", "startupProbe"]) {
        const port = c[probe]?.httpGet?.port;
        if (port === undefined) continue;
        assert.ok(names.has(port) || numbers.has(port), `${dep.metadata.name} ${probe} port ${port}`);
      }
    }
  }
});

test("services select a deployment's pods and target its container ports", () => {
  for (const svc of byKind("Service")) {
    const targets = deployments().filter((d) =>
      labelsMatch(svc.spec.selector, d.spec.template.metadata.labels),
    );
    assert.ok(targets.length > 0, `Service ${svc.metadata.name} selects no Deployment`);
    for (const dep of targets) {
      const ports = containerPorts(dep);
      for (const p of svc.spec.ports) {
        const tp = p.targetPort ?? p.port;
        assert.ok(
          ports.some((cp) => cp.name === tp || cp.containerPort === tp),
          `Service ${svc.metadata.name} port ${p.name}: targetPort ${tp} not in ${dep.metadata.name}`,
        );
      }
    }
  }
  // the Kind overlay's NodePort is what kind-config publishes
  const kindCfg = parseYamlFile(join(deploy, "kind/kind-config.yaml"))[0];
  const overlay = parseYamlFile(join(deploy, "kind/kustomization.yaml"))[0];
  const nodePort = overlay.patches
    .flatMap((p: Obj) => YAML.parse(p.patch))
    .find((op: Obj) => op.path.endsWith("/nodePort"))?.value;
  const mapped = kindCfg.nodes
    .flatMap((n: Obj) => n.extraPortMappings ?? [])
    .map((m: Obj) => m.containerPort);
  assert.ok(mapped.includes(nodePort), `NodePort ${nodePort} not published by kind-config (${mapped})`);
});

test("the gateway: CLI flags agree with its ports, its ServiceAccount is bound to pod get/list/watch", () => {
  const gw = find("Deployment", "kvsync-gateway");
  const c = gw.spec.template.spec.containers[0];
  const args: string[] = c.args;
  assert.equal(args[0], "gateway");
  assert.equal(argValue(args, "--discovery"), "kubernetes");
  assert.equal(argValue(args, "--policy"), "kv-aware");
  assert.equal(argValue(args, "--admin-host"), "0.0.0.0", "probes and Prometheus reach the admin port");
  const port = (name: string) => c.ports.find((p: Obj) => p.name === name)?.containerPort;
  assert.equal(Number(argValue(args, "--port")), port("http"));
  assert.equal(Number(argValue(args, "--admin-port")), port("admin"));
  assert.equal(
    gw.spec.template.metadata.annotations["prometheus.io/port"],
    String(port("admin")),
    "metrics are scraped from the admin port",
  );

  const saName = gw.spec.template.spec.serviceAccountName;
  const sa = find("ServiceAccount", saName);
  const bindings = [...byKind("ClusterRoleBinding"), ...byKind("RoleBinding")].filter((b) =>
    b.subjects.some(
      (s: Obj) => s.kind === "ServiceAccount" && s.name === saName && s.namespace === sa.metadata.namespace,
    ),
  );
  assert.ok(bindings.length > 0, `nothing binds ServiceAccount ${saName}`);
  const verbs = new Set<string>();
  for (const b of bindings) {
    const role = find(b.roleRef.kind, b.roleRef.name);
    for (const r of role.rules) {
      if (r.apiGroups.includes("") && r.resources.includes("pods")) for (const v of r.verbs) verbs.add(v);
    }
  }
  for (const v of ["get", "list", "watch"]) assert.ok(verbs.has(v), `the gateway may not ${v} pods`);
  assert.ok(!verbs.has("delete") && !verbs.has("*"), "least privilege");
});

test("engines: discovered by the gateway's selector, endpoints resolve to their container ports", () => {
  const selector = parseLabelSelector(DEFAULT_LABEL_SELECTOR);
  const engines = deployments().filter((d) => selectorMatches(selector, d.spec.template.metadata.labels));
  assert.deepEqual(engines.map((d) => d.metadata.name).sort(), ["kvsync-mock-engine", "vllm-qwen3"]);
  for (const dep of engines) {
    const pod = {
      apiVersion: "v1",
      kind: "Pod",
      metadata: {
        ...dep.spec.template.metadata,
        name: `${dep.metadata.name}-0`,
        namespace: dep.metadata.namespace,
      },
      spec: dep.spec.template.spec,
      status: { podIP: "10.9.8.7", phase: "Running", conditions: [{ type: "Ready", status: "True" }] },
    };
    const info = podInfoFromPod(pod);
    assert.ok(info, `${dep.metadata.name}: not a usable engine pod`);
    const port = (name: string) => containerPorts(dep).find((p) => p.name === name)?.containerPort;
    assert.equal(info.http, `http://10.9.8.7:${port("http")}`);
    assert.equal(info.events, `tcp://10.9.8.7:${port("kv-events")}`);
    assert.equal(info.replay, `tcp://10.9.8.7:${port("kv-replay")}`);
    assert.equal(info.model, "Qwen/Qwen3-0.6B");
    const c = dep.spec.template.spec.containers[0];
    const args: string[] = c.args;
    if (dep.metadata.name === "vllm-qwen3") {
      const cfg = JSON.parse(argValue(args, "--kv-events-config") ?? "");
      assert.deepEqual(cfg, {
        enable_kv_cache_events: true,
        publisher: "zmq",
        endpoint: `tcp://*:${port("kv-events")}`,
        replay_endpoint: `tcp://*:${port("kv-replay")}`,
      });
      assert.equal(argValue(args, "--model"), info.model);
      assert.equal(Number(argValue(args, "--port")), port("http"));
    } else {
      assert.equal(args[0], "mock-engine");
      assert.equal(Number(argValue(args, "--port")), port("http"));
      assert.equal(argValue(args, "--events-endpoint"), `tcp://*:${port("kv-events")}`);
      assert.equal(argValue(args, "--replay-endpoint"), `tcp://*:${port("kv-replay")}`);
      assert.equal(argValue(args, "--model"), info.model);
    }
    assert.equal(Number(argValue(args, "--block-size")), info.blockSize);
    // the port layout the annotations describe is one the gateway subscribes to
    assert.equal(podStreams(info).error, null, `${dep.metadata.name}: ${podStreams(info).error?.message}`);
    const dpArg = argValue(args, "--data-parallel-size");
    if (dpArg !== undefined) assert.equal(Number(dpArg), info.dataParallelSize);
  }
});

test("every kvsync.io annotation discovery reads is documented in docs/deploy.md and shown in deploy/base", () => {
  const guide = readFileSync(join(root, "docs/deploy.md"), "utf8");
  const manifests = walk(join(deploy, "base"))
    .filter((f) => f.endsWith(".yaml"))
    .map((f) => readFileSync(f, "utf8"))
    .join("\n");
  for (const key of Object.values(ANNOTATIONS)) {
    assert.ok(guide.includes(`\`${key}`), `docs/deploy.md does not document ${key}`);
    // the engine's ports, ranks and block size (adapters depend on the model served)
    if (key !== ANNOTATIONS.loraAdapters)
      assert.ok(manifests.includes(`${key}:`), `no manifest in deploy/base shows ${key}`);
  }
});

test("the NetworkPolicy admits only the gateway to the engines' KV event ports", () => {
  const [np] = byKind("NetworkPolicy");
  const engines = deployments().filter((d) =>
    labelsMatch(np.spec.podSelector.matchLabels, d.spec.template.metadata.labels),
  );
  assert.deepEqual(engines.map((d) => d.metadata.name).sort(), ["kvsync-mock-engine", "vllm-qwen3"]);
  const gw = find("Deployment", "kvsync-gateway");
  assert.ok(
    !labelsMatch(np.spec.podSelector.matchLabels, gw.spec.template.metadata.labels),
    "gateway not isolated",
  );
  const kvPorts = new Set<number>();
  let httpOpen = false;
  for (const rule of np.spec.ingress) {
    const ports = rule.ports.map((p: Obj) => p.port);
    if (!rule.from) {
      // open to all: must not include the KV ports
      for (const dep of engines) {
        const cp = containerPorts(dep);
        for (const p of ports) assert.equal(cp.find((c) => c.containerPort === p)?.name, "http");
      }
      httpOpen = true;
      continue;
    }
    for (const from of rule.from) {
      assert.ok(from.podSelector, "KV ports are opened to pods only");
      assert.ok(
        labelsMatch(from.podSelector.matchLabels, gw.spec.template.metadata.labels),
        "peer is the gateway",
      );
      assert.ok(
        deployments().every(
          (d) => d === gw || !labelsMatch(from.podSelector.matchLabels, d.spec.template.metadata.labels),
        ),
        "peer is only the gateway",
      );
    }
    for (const p of ports) kvPorts.add(p);
  }
  assert.ok(httpOpen, "the engines' HTTP port stays reachable");
  for (const dep of engines) {
    const cp = containerPorts(dep);
    const kv = cp.filter((p) => p.name !== "http").map((p) => p.containerPort);
    assert.deepEqual([...kvPorts].sort(), kv.sort(), `${dep.metadata.name} KV ports vs NetworkPolicy`);
  }
});

test("Dockerfile: multi-stage, non-root, builds with npm ci + build, runs dist/cli.js", () => {
  const text = readFileSync(join(deploy, "Dockerfile"), "utf8");
  const lines = text.split("\n").filter((l) => !l.trim().startsWith("#"));
  assert.ok(lines.filter((l) => /^FROM\s/i.test(l)).length >= 2, "multi-stage");
  const user = lines.filter((l) => /^USER\s/i.test(l)).pop();
  assert.ok(user && !/^USER\s+(root|0)(:|\s|$)/i.test(user), "runs as non-root");
  assert.match(text, /npm (ci|install)[^\n]*&& npm run build/);
  assert.match(text, /npm prune --omit=dev/, "no dev dependencies in the runtime image");
  assert.match(text, /ENTRYPOINT \["node", "dist\/cli\.js"\]/);
  const exposed = lines
    .filter((l) => /^EXPOSE\s/i.test(l))
    .flatMap((l) => l.split(/\s+/).slice(1))
    .map(Number);
  for (const p of [8080, 8081, 8000, 5557, 5558]) assert.ok(exposed.includes(p), `EXPOSE ${p}`);
  for (const dep of deployments()) {
    const c = dep.spec.template.spec.containers[0];
    if (!String(c.image).startsWith("kvsync")) continue;
    assert.equal(
      dep.spec.template.spec.securityContext?.runAsNonRoot,
      true,
      `${dep.metadata.name} runAsNonRoot`,
    );
    assert.equal(c.securityContext?.allowPrivilegeEscalation, false);
  }
});

test("the Kind script is executable and valid bash", () => {
  const script = join(deploy, "kind/up.sh");
  accessSync(script, constants.X_OK);
  const r = spawnSync("bash", ["-n", script], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  const text = readFileSync(script, "utf8");
  assert.match(text, /docker build -f "\$root\/deploy\/Dockerfile"/);
  assert.match(text, /kind load docker-image/);
  assert.match(text, /kubectl apply -k/);
});

test("the Grafana dashboard parses and only charts metrics kvsync registers", () => {
  const dash = JSON.parse(readFileSync(join(deploy, "grafana/kvsync-dashboard.json"), "utf8"));
  assert.equal(typeof dash.title, "string");
  assert.ok(Array.isArray(dash.panels) && dash.panels.length > 10);
  const ids = dash.panels.map((p: Obj) => p.id);
  assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
  const registered = new Set<string>();
  for (const f of walk(join(root, "src")).filter((f) => f.endsWith(".ts"))) {
    for (const m of readFileSync(f, "utf8").matchAll(/"(kvsync_[a-z0-9_]+)"/g)) registered.add(m[1]);
  }
  const used = new Set<string>();
  for (const p of dash.panels) {
    if (p.type === "row") continue;
    assert.ok(p.targets?.length > 0, `panel ${p.title} has no query`);
    for (const t of p.targets) {
      for (const m of String(t.expr).matchAll(/kvsync_[a-z0-9_]+/g))
        used.add(m[0].replace(/_(bucket|sum|count)$/, ""));
    }
  }
  const missing = [...used].filter((m) => !registered.has(m));
  assert.deepEqual(missing, [], "dashboard metrics not registered in src/");
  for (const m of [
    "kvsync_gateway_requests_total",
    "kvsync_gateway_routing_decision_seconds",
    "kvsync_subscriber_events_applied_total",
    "kvsync_subscriber_gaps_total",
    "kvsync_subscriber_replays_total",
    "kvsync_subscriber_resyncs_total",
    "kvsync_subscriber_streams",
    "kvsync_index_entries",
    "kvsync_gateway_prediction_error_ratio",
    "kvsync_discovery_degraded",
  ]) {
    assert.ok(used.has(m), `dashboard lacks ${m}`);
  }
});

test("every CLI flag the manifests pass exists in kvsync's --help", () => {
  const help = new Map<string, string>();
  for (const dep of deployments()) {
    const c = dep.spec.template.spec.containers[0];
    if (!String(c.image).startsWith("kvsync")) continue;
    const args: string[] = c.args;
    const sub = args[0];
    if (!help.has(sub)) {
      const r = spawnSync(process.execPath, ["--import", "tsx", join(root, "src/cli.ts"), sub, "--help"], {
        encoding: "utf8",
        cwd: root,
        timeout: 60_000,
      });
      assert.equal(r.status, 0, `kvsync ${sub} --help failed: ${r.stderr}`);
      help.set(sub, r.stdout);
    }
    for (const flag of args.filter((a) => a.startsWith("--"))) {
      assert.ok(
        new RegExp(`(^|[\\s,])${flag}([\\s,=<[]|$)`, "m").test(help.get(sub) ?? ""),
        `${dep.metadata.name}: kvsync ${sub} has no ${flag}`,
      );
    }
    for (const e of c.env ?? []) {
      assert.ok(
        (help.get(sub) ?? "").includes(e.name) || e.name === "KVSYNC_LOG_LEVEL",
        `env ${e.name} unknown`,
      );
    }
  }
  assert.ok(help.has("gateway") && help.has("mock-engine"));
});
