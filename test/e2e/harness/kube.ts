import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { V1Pod } from "@kubernetes/client-node";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { startFakeKubeApi } from "../../helpers/fake-kube-api.ts";

/**
 * The cluster's API server: the fake Kubernetes API of the discovery tests
 * (`test/helpers/fake-kube-api.ts`: list/watch with resourceVersions and bookmarks over real
 * HTTP), served from the test process in the root namespace; the gateway's real Kubernetes
 * source reads it through a kubeconfig.
 */
export interface KubeBackend {
  /** kubeconfig file pointing at the fake API server */
  kubeconfigPath: string;
  /** create the Pod, or replace it when it exists (watchers see ADDED / MODIFIED) */
  upsertPod(pod: Record<string, unknown>): Promise<void>;
  /** graceful deletion begins: deletionTimestamp set (watchers see MODIFIED; not ready) */
  markTerminating(namespace: string, name: string): Promise<void>;
  /** delete the Pod (watchers see DELETED) */
  deletePod(namespace: string, name: string): Promise<void>;
  /** delay every API request (and each watch's start) by `ms` before answering; 0 = off */
  setLatency(ms: number): void;
  /** end every open watch with 410 Gone (as an API server's compaction does): watchers relist */
  expireWatches(): number;
  close(): Promise<void>;
}

const TOKEN = "e2e-token";

export async function startKube(dir: string): Promise<KubeBackend> {
  const api = await startFakeKubeApi({ host: "127.0.0.1", bookmarkIntervalMs: 1000, token: TOKEN });
  // plain HTTP: @kubernetes/client-node refuses an http:// server unless TLS verification is
  // explicitly off, as kubectl users write it for a local API server
  const kubeconfigPath = join(dir, "kubeconfig.json");
  writeFileSync(
    kubeconfigPath,
    JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "e2e", cluster: { server: api.url, "insecure-skip-tls-verify": true } }],
      users: [{ name: "e2e", user: { token: TOKEN } }],
      contexts: [{ name: "e2e", context: { cluster: "e2e", user: "e2e" } }],
      "current-context": "e2e",
    }),
  );
  const unregister = registerCleanup({ label: "fake kube api", async: () => api.close(), sync: () => {} });
  return {
    kubeconfigPath,
    async upsertPod(pod) {
      const p = pod as V1Pod;
      api.upsertPod(p.metadata?.namespace ?? "default", p);
    },
    async markTerminating(namespace, name) {
      api.markTerminating(namespace, name);
    },
    async deletePod(namespace, name) {
      if (!api.deletePod(namespace, name))
        throw new Error(`fake kube api: no pod ${namespace}/${name} to delete`);
    },
    setLatency(ms) {
      api.setLatency(ms);
    },
    expireWatches: () => api.expireWatches(),
    close: () => {
      unregister();
      return api.close();
    },
  };
}
