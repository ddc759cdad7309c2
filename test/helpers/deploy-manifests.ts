/**
 * Reading deploy/ in tests: YAML files, and a kustomization rendered the way `kubectl apply -k`
 * renders it, for the subset of kustomize deploy/ uses (resources, namespace, labels without
 * selectors, images, JSON 6902 patches by kind and name). Any other kustomization field throws,
 * so an overlay that starts using one fails the tests instead of being rendered wrong.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import YAML from "yaml";

// biome-ignore lint/suspicious/noExplicitAny: manifests are untyped YAML
export type Obj = Record<string, any>;

export function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...walk(p));
    else out.push(p);
  }
  return out;
}

/** Every non-empty document of a YAML file; YAML errors and duplicate keys fail. */
export function parseYamlFile(f: string): Obj[] {
  const docs = YAML.parseAllDocuments(readFileSync(f, "utf8"), { uniqueKeys: true });
  const out: Obj[] = [];
  for (const d of docs) {
    assert.deepEqual(d.errors, [], `${f}: YAML errors`);
    const v = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

// kinds deploy/ uses that have no namespace; kustomize's namespace field leaves them alone
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding"]);
const SUPPORTED = new Set(["apiVersion", "kind", "namespace", "resources", "labels", "images", "patches"]);

function pointer(path: string): string[] {
  assert.ok(path.startsWith("/"), `JSON pointer ${path}`);
  return path
    .slice(1)
    .split("/")
    .map((p) => p.replaceAll("~1", "/").replaceAll("~0", "~"));
}

/** Applies one JSON 6902 operation (add, replace, remove) in place. */
export function applyJsonPatchOp(doc: Obj, op: Obj): void {
  const keys = pointer(op.path);
  const last = keys.pop() as string;
  let parent: Obj = doc;
  for (const k of keys) {
    parent = Array.isArray(parent) ? parent[Number(k)] : parent[k];
    assert.ok(parent !== undefined && parent !== null, `patch path ${op.path} does not exist`);
  }
  const isArray = Array.isArray(parent);
  const index = last === "-" ? parent.length : Number(last);
  switch (op.op) {
    case "add":
      if (isArray) parent.splice(index, 0, structuredClone(op.value));
      else parent[last] = structuredClone(op.value);
      return;
    case "replace":
      assert.ok(isArray ? index < parent.length : Object.hasOwn(parent, last), `replace: ${op.path} missing`);
      if (isArray) parent[index] = structuredClone(op.value);
      else parent[last] = structuredClone(op.value);
      return;
    case "remove":
      assert.ok(isArray ? index < parent.length : Object.hasOwn(parent, last), `remove: ${op.path} missing`);
      if (isArray) parent.splice(index, 1);
      else delete parent[last];
      return;
    default:
      throw new Error(`unsupported patch op ${op.op}`);
  }
}

function podSpecs(o: Obj): Obj[] {
  const spec = o.spec?.template?.spec;
  return spec ? [spec] : [];
}

/** The objects a kustomization directory renders to. */
export function renderKustomization(dir: string): Obj[] {
  const file = join(dir, "kustomization.yaml");
  assert.ok(existsSync(file), `${file} missing`);
  const [k] = parseYamlFile(file);
  for (const key of Object.keys(k)) assert.ok(SUPPORTED.has(key), `${file}: ${key} is not rendered here`);
  const objs: Obj[] = [];
  for (const r of k.resources ?? []) {
    const p = join(dir, r);
    if (statSync(p).isDirectory()) objs.push(...renderKustomization(p));
    else objs.push(...parseYamlFile(p).map((o) => structuredClone(o)));
  }
  if (k.namespace) {
    for (const o of objs) if (!CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace;
  }
  for (const l of k.labels ?? []) {
    assert.ok(!l.includeSelectors && !l.includeTemplates, `${file}: labels into selectors/templates`);
    for (const o of objs) o.metadata.labels = { ...o.metadata.labels, ...l.pairs };
  }
  for (const img of k.images ?? []) {
    for (const o of objs) {
      for (const spec of podSpecs(o)) {
        for (const c of spec.containers ?? []) {
          const [name, tag] = String(c.image).split(":");
          if (name !== img.name) continue;
          c.image = `${img.newName ?? name}:${img.newTag ?? tag}`;
        }
      }
    }
  }
  for (const p of k.patches ?? []) {
    const targets = objs.filter((o) => o.kind === p.target.kind && o.metadata.name === p.target.name);
    assert.equal(targets.length, 1, `${file}: patch target ${p.target.kind}/${p.target.name}`);
    const ops = YAML.parse(p.patch);
    assert.ok(Array.isArray(ops), `${file}: only JSON 6902 patches are rendered here`);
    for (const op of ops) applyJsonPatchOp(targets[0], op);
  }
  return objs;
}
