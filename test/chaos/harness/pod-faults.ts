import { readFileSync } from "node:fs";
import type { Cluster, Pod } from "../../e2e/harness/cluster.ts";
import { answers } from "../../e2e/harness/http.ts";
import type { Fault } from "./experiment.ts";

/**
 * Pod faults that need no injector of their own: an engine's process is killed (and restarted as
 * the kubelet does) or stopped and continued. The engine process is the group leader of its
 * pod's process group (`ip netns exec` replaces itself with node), so the whole group gets the
 * signal, as the container's processes would.
 */

/** Process state letter from /proc (`T` = stopped). */
export function procState(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0] ?? "?";
  } catch {
    return "gone";
  }
}

function signalGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    process.kill(pid, sig);
  }
}

/**
 * SIGKILL the pod's engine; the kubelet sees the container die (the pod turns not ready at once)
 * and restarts it when the fault is removed: event seq from 0, empty cache, at the same address
 * or (newAddress) a new one.
 */
export function podKill(c: Cluster, pod: Pod, opts: { newAddress?: boolean } = {}): Fault {
  let oldPid = -1;
  return {
    affected: [pod],
    async apply() {
      oldPid = pod.group.process.pid;
      await pod.group.process.kill();
      await c.setReady(pod, false);
    },
    async verify() {
      if (procState(oldPid) !== "gone" && procState(oldPid) !== "Z") return `engine ${oldPid} still runs`;
      return (await answers(`${pod.http}/health`, 500)) ? "engine still answers /health" : true;
    },
    async remove() {
      await c.restartEngine(pod, opts);
    },
  };
}

/** SIGSTOP the pods' engines for the window (a frozen container: sockets open, nothing answers), then SIGCONT. */
export function podFailure(pods: Pod[]): Fault {
  return {
    affected: pods,
    async apply() {
      for (const p of pods) signalGroup(p.group.process.pid, "SIGSTOP");
    },
    async verify() {
      for (const p of pods) {
        const s = procState(p.group.process.pid);
        if (s !== "T") return `engine of ${p.name} in state ${s}`;
        // the kernel still accepts connections; nothing answers them
        if (await answers(`${p.http}/health`, 500)) return `${p.name} still answers /health`;
      }
      return true;
    },
    async remove() {
      for (const p of pods) signalGroup(p.group.process.pid, "SIGCONT");
    },
  };
}
