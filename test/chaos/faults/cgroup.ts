import {
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  rmdirSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { run } from "../../../harness/proc.ts";

/** The whole disk (`major:minor`) holding `path`'s filesystem: IO limits apply to disks, not partitions. */
export function diskOf(path: string): string {
  const dev = statSync(path).dev;
  const id = `${Math.floor(dev / 256) & 0xfff}:${(dev & 0xff) | ((Math.floor(dev / 4096) & 0xfff00) >>> 0)}`;
  const sys = `/sys/dev/block/${id}`;
  if (!existsSync(join(sys, "partition"))) return id;
  return readFileSync(join(realpathSync(sys), "..", "dev"), "utf8").trim();
}

/**
 * A pod's cgroups, as the kubelet gives every container: its processes share the pod's CPU limit
 * (v1 `cpu` controller CFS quota, or v2 `cpu.max`), its memory limit (v1 `memory`, or v2
 * `memory.max`), and one cgroup v2 directory whose pressure files (`cpu.pressure`,
 * `memory.pressure`, `io.pressure`: PSI, kept for every v2 cgroup whatever its controllers) say
 * how long its tasks waited. Chaos Mesh's StressChaos runs stress-ng inside the target
 * container's cgroups, so the stress competes with the engine for the pod's limits rather than
 * for the whole machine; the suite does the same by moving the engine's processes and
 * stress-ng's into these cgroups for the fault. The engine reads its own PSI and OOM kills from
 * them (src/engine/container-stats.ts). `remove()` moves every process still in them back to
 * the root cgroups and deletes them.
 */
export interface PodLimits {
  /** the pod's CPU limit, in CPUs (Kubernetes `limits.cpu`) */
  cpus?: number;
  /** the pod's memory limit, bytes (Kubernetes `limits.memory`) */
  memoryBytes?: number;
  /** IO operations a second the pod may do on a block device (`major:minor`), each way */
  iops?: { device: string; perSecond: number };
}

const V2_MOUNTS = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

export class PodCgroup {
  /** every directory the pod's processes go into */
  readonly dirs: string[] = [];
  readonly cpuDir: string | null = null;
  readonly memoryDir: string | null = null;
  readonly ioDir: string | null = null;
  /** the v2 directory (PSI), when the kernel mounts cgroup2 */
  readonly unifiedDir: string | null = null;
  private readonly v2Controllers: boolean;

  constructor(
    name: string,
    readonly limits: PodLimits,
  ) {
    const leaf = `kvsync-chaos-${name}-${process.pid}`;
    // a pure v2 machine has its controllers in the unified tree; a v1 one keeps them apart
    this.v2Controllers =
      !existsSync("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") && existsSync("/sys/fs/cgroup/cgroup.controllers");
    const v2root = V2_MOUNTS.find(
      (m) => existsSync(join(m, "cgroup.procs")) && existsSync(join(m, "cgroup.controllers")),
    );
    if (v2root !== undefined) this.unifiedDir = join(v2root, leaf);
    if (this.v2Controllers) {
      if (limits.cpus !== undefined) this.cpuDir = this.unifiedDir;
      if (limits.memoryBytes !== undefined) this.memoryDir = this.unifiedDir;
      if (limits.iops !== undefined) this.ioDir = this.unifiedDir;
    } else {
      if (limits.cpus !== undefined) this.cpuDir = join("/sys/fs/cgroup/cpu", leaf);
      if (limits.memoryBytes !== undefined) this.memoryDir = join("/sys/fs/cgroup/memory", leaf);
      if (limits.iops !== undefined) this.ioDir = join("/sys/fs/cgroup/blkio", leaf);
    }
    for (const d of [this.unifiedDir, this.cpuDir, this.memoryDir, this.ioDir])
      if (d !== null && !this.dirs.includes(d)) this.dirs.push(d);
  }

  /** kept for the CPU experiment's name (`cgroup.dir` in messages) */
  get dir(): string {
    return this.dirs.join(", ");
  }

  create(): void {
    for (const d of this.dirs) mkdirSync(d, { recursive: true });
    const { cpus, memoryBytes } = this.limits;
    if (cpus !== undefined && this.cpuDir !== null) {
      const period = 100_000;
      const quota = Math.round(cpus * period);
      if (this.v2Controllers) writeFileSync(join(this.cpuDir, "cpu.max"), `${quota} ${period}`);
      else {
        writeFileSync(join(this.cpuDir, "cpu.cfs_period_us"), String(period));
        writeFileSync(join(this.cpuDir, "cpu.cfs_quota_us"), String(quota));
      }
    }
    if (memoryBytes !== undefined && this.memoryDir !== null)
      writeFileSync(
        join(this.memoryDir, this.v2Controllers ? "memory.max" : "memory.limit_in_bytes"),
        String(memoryBytes),
      );
    const iops = this.limits.iops;
    if (iops !== undefined && this.ioDir !== null) {
      const { device: d, perSecond: n } = iops;
      if (this.v2Controllers) writeFileSync(join(this.ioDir, "io.max"), `${d} riops=${n} wiops=${n}`);
      else
        for (const f of ["blkio.throttle.read_iops_device", "blkio.throttle.write_iops_device"])
          writeFileSync(join(this.ioDir, f), `${d} ${n}`);
    }
  }

  /** Move processes (all their threads) into the cgroups; a process gone meanwhile is skipped. */
  add(pids: number[]): void {
    for (const d of this.dirs)
      for (const pid of pids) {
        try {
          writeFileSync(join(d, "cgroup.procs"), String(pid));
        } catch {
          // exited
        }
      }
  }

  pids(dir = this.dirs[this.dirs.length - 1]): number[] {
    try {
      return readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n").filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  /** Is `pid` in every one of the pod's cgroups? */
  holds(pid: number): boolean {
    return this.dirs.every((d) => this.pids(d).includes(pid));
  }

  /** CPU time the cgroup was throttled so far (ms), from cpu.stat. */
  throttledMs(): number {
    if (this.cpuDir === null) return 0;
    try {
      const stat = readFileSync(join(this.cpuDir, "cpu.stat"), "utf8");
      const v1 = /throttled_time (\d+)/.exec(stat);
      if (v1) return Number(v1[1]) / 1e6;
      const v2 = /throttled_usec (\d+)/.exec(stat);
      return v2 ? Number(v2[1]) / 1e3 : 0;
    } catch {
      return 0;
    }
  }

  /** OOM kills in the memory cgroup so far. */
  oomKills(): number {
    if (this.memoryDir === null) return 0;
    const file = join(this.memoryDir, this.v2Controllers ? "memory.events" : "memory.oom_control");
    try {
      const m = /^oom_kill (\d+)/m.exec(readFileSync(file, "utf8"));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  }

  /** PSI `some` stall so far (seconds) of the v2 cgroup, for `resource`. */
  stallSeconds(resource: "cpu" | "memory" | "io"): number {
    if (this.unifiedDir === null) return 0;
    try {
      const m = /^some .*total=(\d+)/m.exec(
        readFileSync(join(this.unifiedDir, `${resource}.pressure`), "utf8"),
      );
      return m ? Number(m[1]) / 1e6 : 0;
    } catch {
      return 0;
    }
  }

  /** IO operations the pod did so far (v1 blkio.throttle.io_serviced / v2 io.stat). */
  ioOps(): number {
    if (this.ioDir === null) return 0;
    try {
      if (this.v2Controllers) {
        const stat = readFileSync(join(this.ioDir, "io.stat"), "utf8");
        return [...stat.matchAll(/[rw]ios=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
      }
      const m = /^Total (\d+)/m.exec(readFileSync(join(this.ioDir, "blkio.throttle.io_serviced"), "utf8"));
      return m ? Number(m[1]) : 0;
    } catch {
      return 0;
    }
  }

  remove(): void {
    for (const d of this.dirs) {
      if (!existsSync(d)) continue;
      for (const pid of this.pids(d)) {
        try {
          writeFileSync(join(d, "..", "cgroup.procs"), String(pid));
        } catch {
          // exited
        }
      }
      try {
        rmdirSync(d);
      } catch {
        // a process still exiting keeps it for a moment; the next run's name differs
      }
    }
  }
}

/**
 * Mount the cgroup hierarchies inside `pid`'s mount namespace, as a container runtime mounts
 * them in a container: `ip netns exec` gives the engine a fresh /sys without them, so it could
 * not read its own cgroup's figures. Only the v2 tree (PSI) and v1 `memory` (OOM kills) are
 * mounted; an existing mount is left alone. The namespace (and the mounts) end with the engine.
 */
export async function exposeCgroups(pid: number): Promise<void> {
  const script = [
    'grep -q " /sys/fs/cgroup/unified " /proc/self/mountinfo && exit 0',
    "mount -t tmpfs -o mode=755 kvsync-cgroups /sys/fs/cgroup || exit 1",
    "mkdir -p /sys/fs/cgroup/unified /sys/fs/cgroup/memory",
    "mount -t cgroup2 none /sys/fs/cgroup/unified || exit 1",
    // a machine whose memory controller is in the v2 tree has no v1 one to mount
    "mount -t cgroup -o memory none /sys/fs/cgroup/memory || true",
  ].join("; ");
  await run("nsenter", ["-t", String(pid), "-m", "sh", "-c", script]);
}
