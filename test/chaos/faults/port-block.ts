/**
 * Port block: the engine's ZMQ ports (events 5557 and replay 5558 by default) are blocked both
 * ways while everything else, HTTP included, still flows, so requests keep changing the cache
 * while its event stream is cut.
 *
 * How: a `netdev` nftables table in the pod's namespace, ingress and egress chains on eth0
 * dropping TCP to / from those ports of the pod's address (silently, as a firewall that drops;
 * see partition.ts for why at the device). When a relay sidecar (relay.ts) fronts the pod, pass
 * the relay's listening ports: those are the ones the gateway connects to.
 *
 * Verify: a TCP connect to the first blocked port times out, and `GET /health` on the HTTP port
 * answers 200. Remove: delete the table.
 */
import { EVENTS_PORT, HTTP_PORT, REPLAY_PORT } from "../../e2e/harness/cluster.ts";
import { type Fault, FaultNotInEffect, httpProbe, type NetTarget, tcpProbe } from "./fault.ts";
import { NftTable } from "./nft.ts";

export interface PortBlockEvidence {
  blockedProbe: { port: number; outcome: string; ms: number };
  health: { status?: number; ms: number };
}

export class PortBlock implements Fault<PortBlockEvidence> {
  readonly name: string;
  private readonly table: NftTable;
  readonly ports: number[];

  constructor(
    readonly target: NetTarget,
    private readonly opts: { ports?: number[]; httpPort?: number } = {},
  ) {
    this.ports = opts.ports ?? [EVENTS_PORT, REPLAY_PORT];
    this.name = `port block ${target.ip}:${this.ports.join("+")}`;
    this.table = new NftTable(target.ns, "netdev", `kvsync_portblock_${target.ip.replaceAll(".", "_")}`);
  }

  get active(): boolean {
    return this.table.loaded;
  }

  async apply(): Promise<void> {
    const { ip, podLink } = this.target;
    const set = `{ ${this.ports.join(", ")} }`;
    await this.table.load(`
  chain ingress {
    type filter hook ingress device "${podLink}" priority 0; policy accept;
    ip daddr ${ip} tcp dport ${set} counter drop comment "in"
  }
  chain egress {
    type filter hook egress device "${podLink}" priority 0; policy accept;
    ip saddr ${ip} tcp sport ${set} counter drop comment "out"
  }`);
  }

  async verify(): Promise<PortBlockEvidence> {
    if (!this.active) throw new FaultNotInEffect(this.name, "not applied");
    const port = this.ports[0];
    const [probe, health] = await Promise.all([
      tcpProbe(this.target.ip, port, 1500),
      httpProbe(`http://${this.target.ip}:${this.opts.httpPort ?? HTTP_PORT}/health`, 3000),
    ]);
    const ev = {
      blockedProbe: { port, outcome: probe.outcome, ms: probe.ms },
      health: { status: health.status, ms: health.ms },
    };
    if (probe.outcome !== "timeout")
      throw new FaultNotInEffect(this.name, `TCP probe to ${this.target.ip}:${port} was ${probe.outcome}`);
    if (!health.ok)
      throw new FaultNotInEffect(
        this.name,
        `HTTP /health should still answer: ${health.error ?? health.status}`,
      );
    return ev;
  }

  async remove(): Promise<void> {
    await this.table.delete();
  }
}
