/**
 * Pod failure: pods' engines freeze (SIGSTOP to each engine's process group) for the window and
 * resume (SIGCONT), the "50 % of pods fail" PodChaos: the process and its sockets stay, nothing
 * answers, TCP peers see a silent stall (the kernel still ACKs, so the sockets look alive).
 * Pod kill (SIGKILL + restart) needs no injector: Cluster.restartEngine does it.
 *
 * Verify: each paused pod's GET /health times out. Remove: SIGCONT; cleanup also sends SIGCONT,
 * so a crashed run leaves no stopped process behind (its group kill then works at once).
 */

import { registerCleanup } from "../../../harness/cleanup.ts";
import type { Pod } from "../../e2e/harness/cluster.ts";
import { type Fault, FaultNotInEffect, httpProbe } from "./fault.ts";

export interface PauseEvidence {
  /** per pod: the /health probe's outcome while paused */
  probes: Array<{ pod: string; ok: boolean; ms: number }>;
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    // the group is gone
  }
}

export class PodPause implements Fault<PauseEvidence> {
  readonly name: string;
  private pids: number[] = [];
  private unregister: (() => void) | null = null;

  constructor(readonly pods: Pod[]) {
    this.name = `pause ${pods.map((p) => p.name).join(", ")}`;
  }

  /** The first half (rounded up) of `pods`, as "50 % of pods". */
  static half(pods: Pod[]): PodPause {
    return new PodPause(pods.slice(0, Math.ceil(pods.length / 2)));
  }

  get active(): boolean {
    return this.unregister !== null;
  }

  async apply(): Promise<void> {
    this.pids = [...new Set(this.pods.map((p) => p.group.process.pid))];
    this.unregister ??= registerCleanup({
      label: this.name,
      sync: () => {
        for (const pid of this.pids) signalGroup(pid, "SIGCONT");
      },
    });
    for (const pid of this.pids) signalGroup(pid, "SIGSTOP");
  }

  async verify(): Promise<PauseEvidence> {
    const probes = await Promise.all(
      this.pods.map(async (p) => {
        const r = await httpProbe(`${p.http}/health`, 1000);
        return { pod: p.name, ok: r.ok, ms: r.ms };
      }),
    );
    const answering = probes.filter((p) => p.ok);
    if (!this.active || answering.length > 0)
      throw new FaultNotInEffect(
        this.name,
        `still answering: ${answering.map((p) => p.pod).join(", ") || "-"}`,
      );
    return { probes };
  }

  async remove(): Promise<void> {
    for (const pid of this.pids) signalGroup(pid, "SIGCONT");
    this.unregister?.();
    this.unregister = null;
  }
}
