import { readdirSync, readFileSync } from "node:fs";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { isAlive, run, runSyncQuiet } from "../../../harness/proc.ts";

/**
 * The test network: a Linux bridge in the root namespace with an address in 198.18.0.0/15
 * (reserved for benchmarking, RFC 2544), one network namespace per "node" joined to it by a
 * veth pair, and any number of pod addresses per node. Every name starts with `kvs<pid>` so a
 * later run can sweep what a dead run left behind (see `sweepStale`).
 *
 * The gateway and the fake Kubernetes API run in the root namespace and reach pods over the
 * bridge; pods only talk to the gateway (no pod-to-pod traffic), so host firewalls that filter
 * bridged forwarding do not matter.
 */

export const RUN_ENV = "KVSYNC_E2E_RUN";
const NETNS_RE = /^kvs(\d+)-/;
const LINK_RE = /^kvs(\d+)[a-z]/;
/** the /15 is split into 128 blocks of /22 (1022 usable addresses each) */
const BLOCK_BITS = 10;
const BLOCKS = 128;
const BASE = ipToInt("198.18.0.0");

export function ipToInt(ip: string): number {
  const p = ip.split(".").map(Number);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export class NamespacesUnavailableError extends Error {}

/**
 * Fail loudly (never skip) when this machine cannot create network namespaces: the E2E suite
 * needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) and iproute2.
 */
export async function preflight(): Promise<void> {
  const probe = `kvs${process.pid}-probe`;
  try {
    await run("ip", ["-V"]);
  } catch (err) {
    throw new NamespacesUnavailableError(
      `E2E suite needs iproute2 ('ip' command) to build its network namespaces: ${(err as Error).message}. ` +
        "Install it (apt-get install iproute2) and run as root; .ci/run does both.",
    );
  }
  try {
    await run("ip", ["netns", "add", probe]);
    await run("ip", ["-n", probe, "link", "set", "lo", "up"]);
  } catch (err) {
    const uid = typeof process.getuid === "function" ? process.getuid() : -1;
    throw new NamespacesUnavailableError(
      `E2E suite cannot create Linux network namespaces on this machine (uid=${uid}): ${(err as Error).message}. ` +
        "It must run as root (CI does: .ci/run); the suite is not skipped, it fails.",
    );
  } finally {
    runSyncQuiet("ip", ["netns", "del", probe]);
  }
}

/** Remove namespaces, links and processes left by runs whose process is gone. */
export async function sweepStale(): Promise<string[]> {
  const removed: string[] = [];
  const dead = (pid: number) => pid !== process.pid && !isAlive(pid);
  // processes first (they keep namespaces busy): anything carrying a dead run's marker
  for (const entry of safeReaddir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    let environ: string;
    try {
      environ = readFileSync(`/proc/${entry}/environ`, "latin1");
    } catch {
      continue;
    }
    const m = environ.match(new RegExp(`(?:^|\\0)${RUN_ENV}=(\\d+)(?:\\0|$)`));
    if (m && dead(Number(m[1]))) {
      try {
        process.kill(Number(entry), "SIGKILL");
        removed.push(`process ${entry}`);
      } catch {
        // gone already
      }
    }
  }
  const nsList = await run("ip", ["netns", "list"]).catch(() => "");
  for (const line of nsList.split("\n")) {
    const name = line.trim().split(/\s+/)[0];
    const m = name?.match(NETNS_RE);
    if (!m || !dead(Number(m[1]))) continue;
    killNamespacePids(name);
    runSyncQuiet("ip", ["netns", "del", name]);
    removed.push(`netns ${name}`);
  }
  const links = await run("ip", ["-o", "link", "show"]).catch(() => "");
  for (const line of links.split("\n")) {
    const name = line.split(":")[1]?.trim().split("@")[0];
    const m = name?.match(LINK_RE);
    if (!m || !dead(Number(m[1]))) continue;
    runSyncQuiet("ip", ["link", "del", name]);
    removed.push(`link ${name}`);
  }
  return removed;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function killNamespacePids(ns: string): void {
  const pids = runSyncQuiet("ip", ["netns", "pids", ns]);
  for (const p of pids.split(/\s+/)) {
    if (!p) continue;
    try {
      process.kill(Number(p), "SIGKILL");
    } catch {
      // gone
    }
  }
}

export interface NetNode {
  /** network namespace name */
  ns: string;
  index: number;
  /** addresses configured on its eth0 (pods) */
  ips: string[];
}

export class TestNetwork {
  readonly prefix: string;
  readonly bridge: string;
  readonly hostIp: string;
  readonly prefixLen = 32 - BLOCK_BITS;
  private readonly base: number;
  private nextHost = 2;
  private nextNode = 0;
  private readonly nodes = new Map<string, NetNode>();
  private readonly unregister: () => void;

  private constructor(block: number) {
    this.prefix = `kvs${process.pid}`;
    this.bridge = `${this.prefix}b`;
    this.base = BASE + block * (1 << BLOCK_BITS);
    this.hostIp = intToIp(this.base + 1);
    this.unregister = registerCleanup({
      label: `network ${this.prefix}`,
      sync: () => this.destroySync(),
    });
  }

  /** Sweep stale runs, check namespaces work, create the bridge. */
  static async create(): Promise<TestNetwork> {
    await sweepStale();
    await preflight();
    const used = await run("ip", ["-o", "-4", "addr", "show"]);
    const taken = new Set<number>();
    for (const m of used.matchAll(/inet (\d+\.\d+\.\d+\.\d+)/g)) {
      const n = ipToInt(m[1]);
      if (n >= BASE && n < BASE + BLOCKS * (1 << BLOCK_BITS)) taken.add((n - BASE) >>> BLOCK_BITS);
    }
    let block = -1;
    for (let i = 0; i < BLOCKS; i++) {
      const b = (process.pid + i) % BLOCKS;
      if (!taken.has(b)) {
        block = b;
        break;
      }
    }
    if (block === -1) throw new Error("no free /22 in 198.18.0.0/15 for the E2E network");
    const net = new TestNetwork(block);
    runSyncQuiet("ip", ["link", "del", net.bridge]);
    await run("ip", ["link", "add", "name", net.bridge, "type", "bridge"]);
    await run("ip", ["addr", "add", `${net.hostIp}/${net.prefixLen}`, "dev", net.bridge]);
    await run("ip", ["link", "set", net.bridge, "up"]);
    return net;
  }

  allocIp(): string {
    if (this.nextHost >= (1 << BLOCK_BITS) - 1) throw new Error(`${this.prefix}: address block exhausted`);
    return intToIp(this.base + this.nextHost++);
  }

  /** A node: a namespace with lo up and eth0 on the bridge, holding `ipCount` fresh addresses. */
  async addNode(ipCount = 1): Promise<NetNode> {
    const index = this.nextNode++;
    const ns = `${this.prefix}-n${index}`;
    const host = `${this.prefix}h${index}`;
    const peer = `${this.prefix}p${index}`;
    const node: NetNode = { ns, index, ips: [] };
    this.nodes.set(ns, node);
    await run("ip", ["netns", "add", ns]);
    await run("ip", ["link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns]);
    await run("ip", ["link", "set", host, "master", this.bridge, "up"]);
    const cmds = [
      "link set lo up",
      `link set ${peer} name eth0`,
      "link set eth0 up",
      `route add default via ${this.hostIp} dev eth0 onlink`,
    ];
    for (const c of cmds) await run("ip", ["-n", ns, ...c.split(" ")]);
    await this.addIps(node, ipCount);
    return node;
  }

  async addIps(node: NetNode, count: number): Promise<string[]> {
    const added: string[] = [];
    for (let i = 0; i < count; i++) {
      const ip = this.allocIp();
      await run("ip", ["-n", node.ns, "addr", "add", `${ip}/${this.prefixLen}`, "dev", "eth0"]);
      node.ips.push(ip);
      added.push(ip);
    }
    return added;
  }

  async removeIp(node: NetNode, ip: string): Promise<void> {
    await run("ip", ["-n", node.ns, "addr", "del", `${ip}/${this.prefixLen}`, "dev", "eth0"]);
    node.ips = node.ips.filter((x) => x !== ip);
  }

  /** the root-namespace end of a node's veth pair (on the bridge) */
  hostLink(node: NetNode): string {
    return `${this.prefix}h${node.index}`;
  }

  /** `ip netns exec` argv prefix for running a command inside a node. */
  execArgs(node: NetNode, cmd: string, args: string[]): [string, string[]] {
    return ["ip", ["netns", "exec", node.ns, cmd, ...args]];
  }

  /** Kill whatever still runs in the node, delete its namespace and link. */
  removeNode(node: NetNode): void {
    killNamespacePids(node.ns);
    runSyncQuiet("ip", ["netns", "del", node.ns]);
    runSyncQuiet("ip", ["link", "del", `${this.prefix}h${node.index}`]);
    this.nodes.delete(node.ns);
  }

  listNodes(): NetNode[] {
    return [...this.nodes.values()];
  }

  private destroySync(): void {
    for (const node of [...this.nodes.values()]) this.removeNode(node);
    runSyncQuiet("ip", ["link", "del", this.bridge]);
  }

  async destroy(): Promise<void> {
    this.unregister();
    this.destroySync();
  }
}
