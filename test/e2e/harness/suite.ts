import { after, before } from "node:test";
import { runCleanups } from "../../../harness/cleanup.ts";
import { Cluster, type ClusterOptions, type Pod } from "./cluster.ts";
import type { GatewayProcess, RoutedResponse } from "./gateway.ts";
import { scaled, waitFor } from "./wait.ts";

/**
 * One cluster per test file: started in `before`, torn down in `after` (and by the exit/signal
 * handlers if the file is interrupted). Returns an accessor.
 */
export function useCluster(opts: ClusterOptions = {}): () => Cluster {
  let cluster: Cluster | undefined;
  before(
    async () => {
      cluster = await Cluster.start(opts);
    },
    { timeout: scaled(120_000) },
  );
  after(
    async () => {
      try {
        await cluster?.stop();
      } finally {
        const errors = await runCleanups();
        if (errors.length) process.stderr.write(`e2e cleanup errors: ${errors.join("; ")}\n`);
      }
    },
    { timeout: scaled(60_000) },
  );
  return () => {
    if (!cluster) throw new Error("cluster not started (see the before hook's error)");
    return cluster;
  };
}

export function gatewayOf(c: Cluster): GatewayProcess {
  if (!c.gateway) throw new Error("cluster has no gateway");
  return c.gateway;
}

/** Wait until the gateway lists every pod with a live stream. */
export async function waitLive(gw: GatewayProcess, pods: Pod[], timeoutMs = 30_000): Promise<void> {
  await waitFor(
    `event streams of ${pods.map((p) => p.name).join(", ")} live at the gateway`,
    async () => {
      const listed = new Map((await gw.pods()).map((p) => [p.name, p]));
      const notLive = pods.filter((p) => listed.get(p.name)?.state !== "live");
      if (notLive.length === 0) return true;
      return `not live: ${notLive
        .slice(0, 5)
        .map((p) => `${p.name}=${listed.get(p.name)?.state ?? "absent"}`)
        .join(", ")}${notLive.length > 5 ? ` (+${notLive.length - 5})` : ""}`;
    },
    { timeoutMs: scaled(timeoutMs), intervalMs: 100 },
  );
}

/** Wait until the gateway lists exactly these pods (no stale pod, none missing). */
export async function waitPodSet(gw: GatewayProcess, pods: Pod[], timeoutMs = 20_000): Promise<void> {
  const want = pods.map((p) => p.name).sort();
  await waitFor(
    `gateway pod set == ${want.join(", ")}`,
    async () => {
      const got = [...new Set((await gw.pods()).map((p) => p.name))].sort();
      const extra = got.filter((n) => !want.includes(n));
      const missing = want.filter((n) => !got.includes(n));
      return extra.length === 0 && missing.length === 0
        ? true
        : `stale: [${extra.join(", ")}], missing: [${missing.join(", ")}]`;
    },
    { timeoutMs: scaled(timeoutMs), intervalMs: 100 },
  );
}

/** Wait until the gateway no longer lists the pod (deleted) and holds no block for it. */
export async function waitGone(gw: GatewayProcess, name: string, timeoutMs = 20_000): Promise<void> {
  await waitFor(
    `pod ${name} gone from the gateway`,
    async () => {
      const listed = (await gw.pods()).find((p) => p.name === name);
      if (listed) return `still listed (state ${listed.state}, ${listed.blocks} blocks)`;
      const n = await podBlockCount(gw, name);
      return n === 0 ? true : `index still holds ${n} blocks of it`;
    },
    { timeoutMs: scaled(timeoutMs), intervalMs: 100 },
  );
}

/** Blocks the index holds for a pod; 0 when the admin API does not know the pod (404). */
export async function podBlockCount(gw: GatewayProcess, name: string): Promise<number> {
  try {
    return (await gw.podBlocks(name)).blocks.length;
  } catch (err) {
    if (/→ 404/.test((err as Error).message)) return 0;
    throw err;
  }
}

export function assertOk(r: RoutedResponse, what: string): void {
  if (r.status !== 200)
    throw new Error(`${what}: status ${r.status}: ${JSON.stringify(r.body).slice(0, 300)}`);
  if (!r.pod) throw new Error(`${what}: no x-kvsync-pod header`);
}

/** Send a completion straight to an engine (bypassing the gateway) to put a prefix in its cache. */
export async function completeDirect(
  pod: Pod,
  prompt: string,
  model = pod.model,
  maxTokens = 4,
): Promise<number> {
  const r = await fetch(`${pod.http}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0 }),
    signal: AbortSignal.timeout(30_000),
  });
  const body = (await r.json()) as { usage?: { prompt_tokens_details?: { cached_tokens?: number } } };
  if (r.status !== 200)
    throw new Error(`direct completion on ${pod.name}: ${r.status} ${JSON.stringify(body)}`);
  return body.usage?.prompt_tokens_details?.cached_tokens ?? 0;
}
