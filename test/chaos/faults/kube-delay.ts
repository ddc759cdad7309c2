/**
 * Kubernetes API delay: every request to the suite's API server, and the start of every watch,
 * waits `delayMs` (2 s by default) before it is answered, as a slow or overloaded API server
 * (Chaos Mesh: an HTTPChaos `delay` on the apiserver) would.
 *
 * How: the latency knob of the fake API server (test/helpers/fake-kube-api.ts `setLatency`),
 * reached through the harness's KubeBackend. Watches already streaming keep streaming (as with
 * a slow API server); new lists, watches and re-lists are slow.
 *
 * Verify: a GET /version with the kubeconfig's credentials takes >= delayMs. Remove: latency 0.
 */
import { readFileSync } from "node:fs";
import { registerCleanup } from "../../../harness/cleanup.ts";
import type { KubeBackend } from "../../e2e/harness/kube.ts";
import { type Fault, FaultNotInEffect } from "./fault.ts";

export interface KubeDelayEvidence {
  probeMs: number;
}

export class KubeApiDelay implements Fault<KubeDelayEvidence> {
  readonly name: string;
  private unregister: (() => void) | null = null;

  constructor(
    private readonly kube: KubeBackend,
    readonly delayMs = 2000,
  ) {
    this.name = `kube api delay ${delayMs}ms`;
  }

  get active(): boolean {
    return this.unregister !== null;
  }

  async apply(): Promise<void> {
    this.unregister ??= registerCleanup({ label: this.name, sync: () => this.kube.setLatency(0) });
    this.kube.setLatency(this.delayMs);
  }

  /** Time one authenticated GET /version against the API server. */
  async probe(): Promise<number> {
    const cfg = JSON.parse(readFileSync(this.kube.kubeconfigPath, "utf8")) as {
      clusters: Array<{ cluster: { server: string } }>;
      users: Array<{ user: { token?: string } }>;
    };
    const t0 = performance.now();
    const r = await fetch(`${cfg.clusters[0].cluster.server}/version`, {
      headers: { authorization: `Bearer ${cfg.users[0].user.token}` },
      signal: AbortSignal.timeout(this.delayMs + 10_000),
    });
    await r.arrayBuffer();
    if (!r.ok) throw new Error(`kube api GET /version → ${r.status}`);
    return performance.now() - t0;
  }

  async verify(): Promise<KubeDelayEvidence> {
    const probeMs = await this.probe();
    if (!this.active || probeMs < this.delayMs)
      throw new FaultNotInEffect(this.name, `GET /version took ${probeMs.toFixed(0)} ms`);
    return { probeMs };
  }

  async remove(): Promise<void> {
    this.kube.setLatency(0);
    this.unregister?.();
    this.unregister = null;
  }
}
