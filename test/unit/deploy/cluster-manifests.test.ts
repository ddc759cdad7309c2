/**
 * deploy/: the gateway runs as replicas that route as one (issue 18): three of them with
 * --cluster pointing at the NATS Service, a NATS server that only they reach, and a
 * PodDisruptionBudget that keeps two through voluntary disruptions. Schemas are checked for every
 * manifest by test/unit/discovery/deploy-manifests.test.ts; this checks that the pieces fit.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { validClusterName } from "../../../src/cluster/messages.ts";
import { type Obj, renderKustomization } from "../../helpers/deploy-manifests.ts";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const docs = renderKustomization(join(root, "deploy/base"));
const find = (kind: string, name: string): Obj => {
  const o = docs.find((d) => d.kind === kind && d.metadata?.name === name);
  assert.ok(o, `no ${kind} ${name} in the rendered deploy/base`);
  return o;
};
const labelsMatch = (sel: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(sel).every(([k, v]) => labels?.[k] === v);
const gateway = find("Deployment", "kvsync-gateway");
const env = (name: string): string | undefined =>
  gateway.spec.template.spec.containers[0].env.find((e: Obj) => e.name === name)?.value;

test("the gateway runs 3 replicas with --cluster, rolled one at a time", () => {
  assert.equal(gateway.spec.replicas, 3);
  assert.equal(gateway.spec.strategy.rollingUpdate.maxUnavailable, 0);
  const url = env("KVSYNC_CLUSTER");
  assert.match(url ?? "", /^nats:\/\/[a-z0-9-]+:\d+$/);
  assert.ok(validClusterName(env("KVSYNC_CLUSTER_NAME") ?? "default"));
  // the env twins are the gateway's real flags
  const cli = readFileSync(join(root, "src/commands/cluster-options.ts"), "utf8");
  for (const v of ["KVSYNC_CLUSTER", "KVSYNC_CLUSTER_NAME"]) assert.ok(cli.includes(`"${v}"`), v);
});

test("KVSYNC_CLUSTER names the NATS Service, which selects the NATS pods on their client port", () => {
  const [, host, port] = /^nats:\/\/([^:]+):(\d+)$/.exec(env("KVSYNC_CLUSTER") ?? "") ?? [];
  const svc = find("Service", host);
  const nats = find("Deployment", "kvsync-nats");
  assert.ok(
    labelsMatch(svc.spec.selector, nats.spec.template.metadata.labels),
    "service selects the NATS pods",
  );
  const sp = svc.spec.ports.find((p: Obj) => p.port === Number(port));
  assert.ok(sp, `service has no port ${port}`);
  const cp = nats.spec.template.spec.containers[0].ports.find((p: Obj) => p.name === sp.targetPort);
  assert.equal(cp?.containerPort, Number(port));
  // a snapshot chunk (~256 KiB target, 1 MiB accepted) fits the server's max payload
  const args: string[] = nats.spec.template.spec.containers[0].args;
  assert.equal(args[args.indexOf("--max_payload") + 1], "2MB");
});

test("only the gateway replicas reach NATS", () => {
  const np = find("NetworkPolicy", "kvsync-nats");
  const nats = find("Deployment", "kvsync-nats");
  assert.ok(labelsMatch(np.spec.podSelector.matchLabels, nats.spec.template.metadata.labels));
  const from = np.spec.ingress[0].from[0].podSelector.matchLabels;
  assert.ok(labelsMatch(from, gateway.spec.template.metadata.labels));
  assert.deepEqual(np.spec.ingress[0].ports, [{ protocol: "TCP", port: 4222 }]);
});

test("the PodDisruptionBudget covers the gateway pods and leaves room for one disruption", () => {
  const pdb = find("PodDisruptionBudget", "kvsync-gateway");
  assert.ok(labelsMatch(pdb.spec.selector.matchLabels, gateway.spec.template.metadata.labels));
  assert.ok(pdb.spec.minAvailable >= 2 && pdb.spec.minAvailable < gateway.spec.replicas);
});
