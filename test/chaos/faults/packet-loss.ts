/**
 * Packet loss, 50 % with 25 % correlation (netem's `loss 50% 25%`, Chaos Mesh NetworkChaos
 * `loss`), without netem: nftables in the pod's namespace run a two-state (Gilbert) chain.
 *
 * netem's correlation c mixes the previous decision in: P(drop | previous dropped) =
 * p + c(1-p) = 0.625 and P(drop | previous passed) = p(1-c) = 0.375, so the mean stays 50 % and
 * drops come in bursts (mean burst 1/(1-0.625) = 2.7 packets).
 *
 * How: `numgen random mod 1000 < 625` (or `< 375`) picks the drop; the state "previous packet
 * dropped" lives in the connection's conntrack mark, one bit per direction (0x1 egress, 0x2
 * ingress). Not in a dynamic set: on this kernel (6.18, nft 1.0.6) an element deleted from the
 * packet path (`delete @set`) lingers until the next commit, so re-adding it from the packet
 * path fails about half the time (measured: P(drop | passed) came out 0.22, not 0.375). So the
 * state is per connection (per UDP flow, per TCP connection), which is netem's per-interface
 * chain as each connection sees it when it has the link to itself.
 * - ingress (to the pod): decided and dropped in an `inet` prerouting chain (after conntrack);
 * - egress (from the pod): decided in the `inet` output chain, which only sets a packet mark,
 *   and dropped by a `netdev` egress chain on eth0 that drops marked packets. Dropping in the
 *   output hook itself would return EPERM to the engine's send (a lost packet never does that;
 *   netem drops silently at the qdisc). conntrack is not available at netdev egress, hence the
 *   split.
 * Directions: `egress` (default: Chaos Mesh applies netem to the pod's egress) or `both`.
 *
 * Verify, by measuring: a probe process in the pod's namespace and the test process exchange
 * numbered UDP datagrams (a few hundred each way, ~2 ms apart) and the loss ratio and both
 * conditional loss ratios are compared with 0.5 / 0.625 / 0.375 (± `tolerance`, default 0.1,
 * about 4 standard deviations at 800 samples). Remove: delete both tables.
 */
import { createSocket } from "node:dgram";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { childEnv, ManagedProcess } from "../../../harness/proc.ts";
import { RUN_ENV } from "../../e2e/harness/netns.ts";
import { scaled, WaitAborted, waitFor } from "../../e2e/harness/wait.ts";
import { type Fault, FaultNotInEffect, type NetTarget, sleep } from "./fault.ts";
import { NftTable } from "./nft.ts";

export interface LossStats {
  sent: number;
  lost: number;
  lossRatio: number;
  /** P(lost | previous lost) */
  afterLoss: number;
  /** P(lost | previous delivered) */
  afterDelivery: number;
}

export interface LossEvidence {
  egress: LossStats;
  ingress?: LossStats;
}

export function lossStats(delivered: boolean[]): LossStats {
  const lost = delivered.filter((d) => !d).length;
  let afterLossN = 0;
  let afterLossLost = 0;
  let afterDelN = 0;
  let afterDelLost = 0;
  for (let i = 1; i < delivered.length; i++) {
    if (!delivered[i - 1]) {
      afterLossN++;
      if (!delivered[i]) afterLossLost++;
    } else {
      afterDelN++;
      if (!delivered[i]) afterDelLost++;
    }
  }
  return {
    sent: delivered.length,
    lost,
    lossRatio: lost / Math.max(1, delivered.length),
    afterLoss: afterLossLost / Math.max(1, afterLossN),
    afterDelivery: afterDelLost / Math.max(1, afterDelN),
  };
}

// The pod-side probe: bind, say "ready <port>", send `count` numbered datagrams to the host
// every `interval` ms, record the numbers received, and once its sending is done and nothing
// arrived for `quietMs`, print them as JSON and exit.
const POD_PROBE = `
const dgram = require("node:dgram");
const [hostIp, hostPort, podIp, count, interval, quietMs] = process.argv.slice(1);
const s = dgram.createSocket("udp4");
const got = [];
let last = Date.now();
s.on("message", (m) => { got.push(Number(m.toString().slice(1))); last = Date.now(); });
s.bind(0, podIp, () => {
  console.log("ready " + s.address().port);
  let i = 0;
  const t = setInterval(() => {
    s.send("E" + i, Number(hostPort), hostIp, () => {});
    if (++i >= Number(count)) {
      clearInterval(t);
      last = Math.max(last, Date.now());
      setInterval(() => {
        if (Date.now() - last < Number(quietMs)) return;
        console.log("got " + JSON.stringify(got));
        process.exit(0);
      }, 100);
    }
  }, Number(interval));
});
`;

export class PacketLoss implements Fault<LossEvidence> {
  readonly name: string;
  private readonly table: NftTable;
  private readonly devTable: NftTable;
  readonly directions: "egress" | "both";

  constructor(
    readonly target: NetTarget,
    private readonly opts: {
      directions?: "egress" | "both";
      lossPercent?: number;
      correlationPercent?: number;
      /** verify: datagrams each way (default 800) and tolerance on each ratio (default 0.1) */
      probes?: number;
      tolerance?: number;
      hostIp: string;
      logDir: string;
    },
  ) {
    this.directions = opts.directions ?? "egress";
    const id = target.ip.replaceAll(".", "_");
    this.name = `packet loss ${this.p * 100}% corr ${this.c * 100}% ${this.directions} ${target.ip}`;
    this.table = new NftTable(target.ns, "inet", `kvsync_loss_${id}`);
    this.devTable = new NftTable(target.ns, "netdev", `kvsync_lossdev_${id}`);
  }

  private get p(): number {
    return (this.opts.lossPercent ?? 50) / 100;
  }
  private get c(): number {
    return (this.opts.correlationPercent ?? 25) / 100;
  }
  /** drop thresholds out of 1000: after a drop, after a pass */
  get thresholds(): { afterDrop: number; afterPass: number } {
    return {
      afterDrop: Math.round((this.p + this.c * (1 - this.p)) * 1000),
      afterPass: Math.round(this.p * (1 - this.c) * 1000),
    };
  }

  get active(): boolean {
    return this.table.loaded;
  }

  async apply(): Promise<void> {
    const { ip, podLink } = this.target;
    const { afterDrop, afterPass } = this.thresholds;
    const MARK = "0x10";
    let body = `
  chain output {
    type filter hook output priority 0; policy accept;
    oifname "${podLink}" ip saddr ${ip} ct mark and 0x1 == 0x1 goto out_after_drop
    oifname "${podLink}" ip saddr ${ip} goto out_after_pass
  }
  chain out_after_drop {
    numgen random mod 1000 < ${afterDrop} meta mark set meta mark or ${MARK} counter accept comment "out_dd"
    ct mark set ct mark and 0xfffffffe counter accept comment "out_dp"
  }
  chain out_after_pass {
    numgen random mod 1000 < ${afterPass} ct mark set ct mark or 0x1 meta mark set meta mark or ${MARK} counter accept comment "out_pd"
    counter accept comment "out_pp"
  }`;
    if (this.directions === "both")
      body += `
  chain prerouting {
    type filter hook prerouting priority 0; policy accept;
    iifname "${podLink}" ip daddr ${ip} ct mark and 0x2 == 0x2 goto in_after_drop
    iifname "${podLink}" ip daddr ${ip} goto in_after_pass
  }
  chain in_after_drop {
    numgen random mod 1000 < ${afterDrop} counter drop comment "in_dd"
    ct mark set ct mark and 0xfffffffd counter accept comment "in_dp"
  }
  chain in_after_pass {
    numgen random mod 1000 < ${afterPass} ct mark set ct mark or 0x2 counter drop comment "in_pd"
    counter accept comment "in_pp"
  }`;
    // the drop of marked packets first, so no packet is ever marked without a dropper in place
    await this.devTable.load(`
  chain egress {
    type filter hook egress device "${podLink}" priority 0; policy accept;
    meta mark and ${MARK} == ${MARK} counter drop comment "dropped"
  }`);
    await this.table.load(body);
  }

  /** Exchange numbered datagrams with a probe in the pod's namespace; what got through each way. */
  async measure(): Promise<LossEvidence> {
    const count = this.opts.probes ?? 800;
    const intervalMs = 2;
    const sock = createSocket("udp4");
    const egressGot = new Set<number>();
    sock.on("message", (m) => egressGot.add(Number(m.toString().slice(1))));
    await new Promise<void>((r) => sock.bind(0, this.opts.hostIp, () => r()));
    const logFile = join(this.opts.logDir, `loss-probe-${Date.now()}.log`);
    const proc = new ManagedProcess(
      "loss-probe",
      "ip",
      [
        "netns",
        "exec",
        this.target.ns,
        process.execPath,
        "-e",
        POD_PROBE,
        this.opts.hostIp,
        String(sock.address().port),
        this.target.ip,
        String(count),
        String(intervalMs),
        "1000",
      ],
      logFile,
      childEnv(RUN_ENV, String(process.pid)),
    );
    try {
      let podPort = 0;
      await waitFor(
        "loss probe ready",
        () => {
          if (!proc.running) throw new WaitAborted(`probe ${proc.describeExit()}: ${proc.tail(500)}`);
          const m = /ready (\d+)/.exec(readFileSync(logFile, "utf8"));
          if (!m) return "not yet";
          podPort = Number(m[1]);
          return true;
        },
        { timeoutMs: scaled(15_000), intervalMs: 50 },
      );
      if (this.directions === "both") {
        for (let i = 0; i < count; i++) {
          sock.send(`I${i}`, podPort, this.target.ip);
          await sleep(intervalMs);
        }
      }
      await Promise.race([proc.exited, sleep(scaled(30_000))]);
      const m = /got (\[.*\])/.exec(readFileSync(logFile, "utf8"));
      if (!m) throw new Error(`loss probe gave no result: ${proc.describeExit()} ${proc.tail(500)}`);
      const ingressGot = new Set(JSON.parse(m[1]) as number[]);
      const seq = (got: Set<number>) => Array.from({ length: count }, (_, i) => got.has(i));
      const ev: LossEvidence = { egress: lossStats(seq(egressGot)) };
      if (this.directions === "both") ev.ingress = lossStats(seq(ingressGot));
      return ev;
    } finally {
      sock.close();
      await proc.stop(500);
    }
  }

  async verify(): Promise<LossEvidence> {
    if (!this.active) throw new FaultNotInEffect(this.name, "not applied");
    const ev = await this.measure();
    const tol = this.opts.tolerance ?? 0.1;
    const { afterDrop, afterPass } = this.thresholds;
    const off: string[] = [];
    for (const [dir, s] of Object.entries(ev) as Array<[string, LossStats]>) {
      const check = (what: string, got: number, want: number) => {
        if (Math.abs(got - want) > tol) off.push(`${dir} ${what} ${got.toFixed(3)} (want ${want} ± ${tol})`);
      };
      check("loss", s.lossRatio, this.p);
      check("P(loss|loss)", s.afterLoss, afterDrop / 1000);
      check("P(loss|delivered)", s.afterDelivery, afterPass / 1000);
    }
    if (off.length) throw new FaultNotInEffect(this.name, off.join("; "));
    return ev;
  }

  async remove(): Promise<void> {
    await this.table.delete();
    await this.devTable.delete();
  }
}
