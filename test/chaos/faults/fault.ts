/**
 * The contract every chaos fault injector of test/chaos/faults/ follows, and the probes they
 * share.
 *
 * A `Fault` is created idle (nothing changed on the machine), then:
 * - `apply()` injects it; from that moment a cleanup action is registered with the E2E
 *   harness (harness/cleanup.ts), so a crashed or interrupted run removes it too;
 * - `verify()` measures that it really took effect (a probe times out, a transfer is slow, a
 *   clock is ahead...) and resolves with the measurement, or rejects with `FaultNotInEffect`:
 *   an experiment must never measure "recovery" from a fault that silently did nothing;
 * - `remove()` undoes it and unregisters the cleanup; calling it twice is harmless.
 * Injectors that must sit in the traffic's path from the start (the TCP relay, the slow log
 * pipe, the skewable clock) are started once in a neutral mode and toggled by apply/remove.
 *
 * Targets are addressed by `NetTarget` (a pod's network namespace, its address, and the
 * root-namespace end of its veth), built from the harness's TestNetwork with `netTarget()`.
 */
import { connect } from "node:net";
import type { NetNode, TestNetwork } from "../../e2e/harness/netns.ts";

export interface Fault<Evidence = unknown> {
  readonly name: string;
  readonly active: boolean;
  apply(): Promise<void>;
  verify(): Promise<Evidence>;
  remove(): Promise<void>;
}

/** The fault is applied but a probe shows no effect (or the wrong one). */
export class FaultNotInEffect extends Error {
  constructor(fault: string, detail: string) {
    super(`fault ${fault} is not in effect: ${detail}`);
  }
}

export interface NetTarget {
  /** network namespace of the pod's node */
  ns: string;
  /** the pod's address (a node may hold several; the rules match this one) */
  ip: string;
  /** the node's interface inside the namespace */
  podLink: string;
  /** the root-namespace end of the node's veth, on the bridge */
  hostLink: string;
}

export function netTarget(net: TestNetwork, node: NetNode, ip = node.ips[0]): NetTarget {
  return { ns: node.ns, ip, podLink: "eth0", hostLink: net.hostLink(node) };
}

export type TcpOutcome = "open" | "refused" | "timeout" | "error";

/** Try a TCP connection from the root namespace: did the handshake complete, fail, or hang? */
export function tcpProbe(
  host: string,
  port: number,
  timeoutMs = 1000,
): Promise<{ outcome: TcpOutcome; ms: number; detail?: string }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const s = connect({ host, port });
    const done = (outcome: TcpOutcome, detail?: string) => {
      clearTimeout(timer);
      s.destroy();
      resolve({ outcome, ms: performance.now() - t0, detail });
    };
    const timer = setTimeout(() => done("timeout"), timeoutMs);
    s.once("connect", () => done("open"));
    s.once("error", (err: NodeJS.ErrnoException) =>
      done(err.code === "ECONNREFUSED" ? "refused" : "error", err.code ?? err.message),
    );
  });
}

/** GET `url`: status and time, or the error (e.g. a timeout) as text. */
export async function httpProbe(
  url: string,
  timeoutMs = 2000,
): Promise<{ ok: boolean; status?: number; ms: number; headers?: Headers; error?: string }> {
  const t0 = performance.now();
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await r.arrayBuffer();
    return { ok: r.ok, status: r.status, ms: performance.now() - t0, headers: r.headers };
  } catch (err) {
    return { ok: false, ms: performance.now() - t0, error: (err as Error).message };
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
