import { readFileSync } from "node:fs";
import { join } from "node:path";

/**
 * The engine's own container figures, read from its cgroups as the kubelet's cAdvisor reads a
 * container's (and under cAdvisor's metric names, so a gateway reads them the same from either):
 * - pressure stall time (PSI, cgroup v2 `cpu.pressure` / `memory.pressure` / `io.pressure`, the
 *   `some` line): seconds in which at least one of the container's tasks waited for the resource;
 * - OOM kills inside the container (v2 `memory.events`, or v1 `memory.oom_control`).
 *
 * These say what the engine's own answers cannot: a pod starved of CPU by a neighbour in its
 * cgroup, one whose memory limit makes the kernel kill its processes, one whose IO stalls, all
 * before (or without) the engine slowing enough to stand out in the fleet. A process in the root
 * cgroup is not in a container: its root figures are the machine's, so nothing is reported.
 * The paths are looked up on every read: a process moved to another cgroup reports the new one.
 */

export type PressureResource = "cpu" | "memory" | "io";
export const PRESSURE_RESOURCES: readonly PressureResource[] = ["cpu", "memory", "io"];

export interface ContainerStats {
  /** PSI `some` stall time (s) by resource; absent when the kernel or cgroup has none */
  pressureSeconds: Partial<Record<PressureResource, number>>;
  oomKills?: number;
}

interface CgroupPaths {
  /** the v2 (unified) cgroup's directory, if not the root */
  v2: string | null;
  /** the v1 memory cgroup's directory, if not the root */
  memoryV1: string | null;
}

function readOr(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/**
 * Where the cgroup hierarchies are mounted (from /proc/self/mountinfo). Read each time: in a
 * network namespace entered with `ip netns exec` they appear only once the runtime mounts them.
 */
function cgroupMounts(): { v2: string | null; memoryV1: string | null } {
  const mounts: { v2: string | null; memoryV1: string | null } = { v2: null, memoryV1: null };
  for (const line of (readOr("/proc/self/mountinfo") ?? "").split("\n")) {
    const sep = line.indexOf(" - ");
    if (sep === -1) continue;
    const point = line.slice(0, sep).split(" ")[4];
    const [fstype, , superOpts = ""] = line.slice(sep + 3).split(" ");
    if (fstype === "cgroup2") mounts.v2 ??= point;
    else if (fstype === "cgroup" && superOpts.split(",").includes("memory")) mounts.memoryV1 ??= point;
  }
  return mounts;
}

/** This process's cgroups (from /proc/self/cgroup); root cgroups are null. */
export function ownCgroups(procCgroup = readOr("/proc/self/cgroup") ?? ""): CgroupPaths {
  const m = cgroupMounts();
  const out: CgroupPaths = { v2: null, memoryV1: null };
  for (const line of procCgroup.split("\n")) {
    // `<id>:<controllers>:<path>`; the v2 line is `0::<path>`
    const a = line.indexOf(":");
    const b = line.indexOf(":", a + 1);
    if (a === -1 || b === -1) continue;
    const [id, controllers, path] = [line.slice(0, a), line.slice(a + 1, b), line.slice(b + 1)];
    if (path === "/" || path === "") continue;
    if (id === "0" && controllers === "" && m.v2 !== null) out.v2 = join(m.v2, path);
    else if (controllers.split(",").includes("memory") && m.memoryV1 !== null)
      out.memoryV1 = join(m.memoryV1, path);
  }
  return out;
}

/** The `some` line's total (µs) of a PSI file, in seconds. */
export function parsePressureTotal(text: string): number | undefined {
  const m = /^some .*total=(\d+)/m.exec(text);
  return m === null ? undefined : Number(m[1]) / 1e6;
}

let memo: { at: number; stats: ContainerStats | null } | null = null;

/** The figures, read at most once per 100 ms (one scrape reads them for several metrics). */
export function readContainerStats(): ContainerStats | null {
  const now = performance.now();
  if (memo === null || now - memo.at > 100) memo = { at: now, stats: readContainerStatsNow() };
  return memo.stats;
}

function readContainerStatsNow(): ContainerStats | null {
  const cg = ownCgroups();
  if (cg.v2 === null && cg.memoryV1 === null) return null;
  const stats: ContainerStats = { pressureSeconds: {} };
  if (cg.v2 !== null)
    for (const r of PRESSURE_RESOURCES) {
      const text = readOr(join(cg.v2, `${r}.pressure`));
      const s = text === null ? undefined : parsePressureTotal(text);
      if (s !== undefined) stats.pressureSeconds[r] = s;
    }
  const events = cg.v2 !== null ? readOr(join(cg.v2, "memory.events")) : null;
  const v1 = cg.memoryV1 !== null ? readOr(join(cg.memoryV1, "memory.oom_control")) : null;
  const m = /^oom_kill (\d+)/m.exec(events ?? v1 ?? "");
  if (m !== null) stats.oomKills = Number(m[1]);
  return stats;
}
