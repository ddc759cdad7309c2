import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * A pod's CPU cgroup (cgroup v1 `cpu` controller, or v2 `cpu.max`), as the kubelet gives every
 * container: its processes share the pod's CPU limit. Chaos Mesh's StressChaos runs stress-ng
 * inside the target container's cgroups, so the stress competes with the engine for the pod's
 * limit rather than for the whole machine; the suite does the same by moving the engine's
 * processes and stress-ng's into one cgroup with a CFS quota. `remove()` moves every process
 * still in it back to the root cgroup and deletes it.
 */
export class PodCpuCgroup {
  readonly dir: string;
  private readonly v2: boolean;

  constructor(
    name: string,
    /** the pod's CPU limit, in CPUs (Kubernetes `limits.cpu`) */
    readonly cpus: number,
  ) {
    this.v2 =
      !existsSync("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") && existsSync("/sys/fs/cgroup/cgroup.controllers");
    const root = this.v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/cpu";
    this.dir = join(root, `kvsync-chaos-${name}-${process.pid}`);
  }

  private get root(): string {
    return join(this.dir, "..");
  }

  create(): void {
    mkdirSync(this.dir, { recursive: true });
    const period = 100_000;
    const quota = Math.round(this.cpus * period);
    if (this.v2) writeFileSync(join(this.dir, "cpu.max"), `${quota} ${period}`);
    else {
      writeFileSync(join(this.dir, "cpu.cfs_period_us"), String(period));
      writeFileSync(join(this.dir, "cpu.cfs_quota_us"), String(quota));
    }
  }

  /** Move processes (all their threads) into the cgroup; a process gone meanwhile is skipped. */
  add(pids: number[]): void {
    for (const pid of pids) {
      try {
        writeFileSync(join(this.dir, "cgroup.procs"), String(pid));
      } catch {
        // exited
      }
    }
  }

  pids(): number[] {
    try {
      return readFileSync(join(this.dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  /** CPU time the cgroup was throttled so far (ms), from cpu.stat. */
  throttledMs(): number {
    try {
      const stat = readFileSync(join(this.dir, "cpu.stat"), "utf8");
      const v1 = /throttled_time (\d+)/.exec(stat);
      if (v1) return Number(v1[1]) / 1e6;
      const v2 = /throttled_usec (\d+)/.exec(stat);
      return v2 ? Number(v2[1]) / 1e3 : 0;
    } catch {
      return 0;
    }
  }

  remove(): void {
    if (!existsSync(this.dir)) return;
    for (const pid of this.pids()) {
      try {
        writeFileSync(join(this.root, "cgroup.procs"), String(pid));
      } catch {
        // exited
      }
    }
    try {
      rmdirSync(this.dir);
    } catch {
      // a process still exiting keeps it for a moment; the next run's name differs
    }
  }
}
