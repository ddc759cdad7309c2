/**
 * Network partition: the pod is cut off from everyone (the gateway included), both ways.
 *
 * How: a `netdev` nftables table in the pod's namespace with an ingress and an egress chain on
 * its eth0 that drop every IPv4 packet to / from the pod's address (ARP still flows, so peers
 * see silence, not "no route to host"). Dropping at the device, not in the IP `output` hook,
 * matters: an `output` drop hands the engine's own sends an immediate EPERM, which a cut cable
 * never does; at `egress` the packets vanish silently and TCP only learns from its timers, the
 * silent stall the chaos suite must detect. Chaos Mesh's NetworkChaos `partition` does the same
 * with iptables in the pod's namespace.
 *
 * Verify: a TCP connect from the root namespace to the pod's HTTP port times out (no refusal,
 * no answer) and the drop counters moved. Remove: delete the table; open connections resume
 * (their retransmits get through) unless a side gave up meanwhile.
 */
import { HTTP_PORT } from "../../e2e/harness/cluster.ts";
import { type Fault, FaultNotInEffect, type NetTarget, tcpProbe } from "./fault.ts";
import { NftTable } from "./nft.ts";

export interface PartitionEvidence {
  probe: { outcome: string; ms: number };
  droppedIn: number;
  droppedOut: number;
}

export class Partition implements Fault<PartitionEvidence> {
  readonly name: string;
  private readonly table: NftTable;

  constructor(
    readonly target: NetTarget,
    private readonly opts: { probePort?: number; probeTimeoutMs?: number } = {},
  ) {
    this.name = `partition ${target.ip}`;
    this.table = new NftTable(target.ns, "netdev", `kvsync_partition_${target.ip.replaceAll(".", "_")}`);
  }

  get active(): boolean {
    return this.table.loaded;
  }

  async apply(): Promise<void> {
    const { ip, podLink } = this.target;
    await this.table.load(`
  chain ingress {
    type filter hook ingress device "${podLink}" priority 0; policy accept;
    ip daddr ${ip} counter drop comment "in"
  }
  chain egress {
    type filter hook egress device "${podLink}" priority 0; policy accept;
    ip saddr ${ip} counter drop comment "out"
  }`);
  }

  async verify(): Promise<PartitionEvidence> {
    const port = this.opts.probePort ?? HTTP_PORT;
    const probe = await tcpProbe(this.target.ip, port, this.opts.probeTimeoutMs ?? 1500);
    const c = await this.table.counters();
    const ev = {
      probe: { outcome: probe.outcome, ms: probe.ms },
      droppedIn: c.in ?? 0,
      droppedOut: c.out ?? 0,
    };
    if (!this.active) throw new FaultNotInEffect(this.name, "not applied");
    if (probe.outcome !== "timeout")
      throw new FaultNotInEffect(this.name, `TCP probe to ${this.target.ip}:${port} was ${probe.outcome}`);
    if (ev.droppedIn === 0) throw new FaultNotInEffect(this.name, "no packet was dropped");
    return ev;
  }

  async remove(): Promise<void> {
    await this.table.delete();
  }
}
