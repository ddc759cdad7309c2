/**
 * Bandwidth limit, 1 Mbit/s (Chaos Mesh NetworkChaos `bandwidth`), both directions of the pod's
 * link.
 *
 * How: a token-bucket qdisc (`tc qdisc replace ... root tbf rate 1mbit burst 10kb latency 400ms`)
 * on each end of the pod's veth: eth0 inside the pod's namespace shapes what the pod sends,
 * the host-side veth in the root namespace (its egress leads into the pod) shapes what the pod
 * receives. tbf needs no netem; what exceeds 400 ms of queue is dropped, as on a real
 * bottleneck. Both qdiscs are registered with the harness cleanup; `tc qdisc del ... root`
 * restores the default.
 *
 * Verify, by timing transfers: a probe server in the pod's namespace sends (download) and
 * receives (upload) `probeBytes` (128 KB: ~1 s at 1 Mbit/s) over TCP; each direction must come
 * out at <= 1.5x the rate (and the default path is orders of magnitude faster).
 */

import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { childEnv, ManagedProcess, run, runSyncQuiet } from "../../../harness/proc.ts";
import { RUN_ENV } from "../../e2e/harness/netns.ts";
import { scaled, WaitAborted, waitFor } from "../../e2e/harness/wait.ts";
import { type Fault, FaultNotInEffect, type NetTarget } from "./fault.ts";

export interface BandwidthEvidence {
  /** measured rates, Mbit/s */
  downloadMbit: number;
  uploadMbit: number;
}

// The pod-side probe server: a connection whose first byte is "D" gets `bytes` bytes then EOF;
// any other connection is read to its end and answered with "ok".
const POD_SERVER = `
const net = require("node:net");
const [ip, bytes] = process.argv.slice(1);
const srv = net.createServer((c) => {
  c.once("data", (first) => {
    if (first[0] === 68) c.end(Buffer.alloc(Number(bytes), 120));
    else { c.on("data", () => {}); c.on("end", () => c.end("ok")); }
  });
  c.on("error", () => {});
});
srv.listen(0, ip, () => console.log("ready " + srv.address().port));
`;

export class Bandwidth implements Fault<BandwidthEvidence> {
  readonly name: string;
  private unregister: (() => void) | null = null;

  constructor(
    readonly target: NetTarget,
    private readonly opts: { rate?: string; rateMbit?: number; probeBytes?: number; logDir: string },
  ) {
    this.name = `bandwidth ${this.rate} ${target.ip}`;
  }

  get rate(): string {
    return this.opts.rate ?? "1mbit";
  }
  private get rateMbit(): number {
    return this.opts.rateMbit ?? 1;
  }

  get active(): boolean {
    return this.unregister !== null;
  }

  private qdiscArgs(dev: string): string[] {
    return [
      "qdisc",
      "replace",
      "dev",
      dev,
      "root",
      "tbf",
      "rate",
      this.rate,
      "burst",
      "10kb",
      "latency",
      "400ms",
    ];
  }

  async apply(): Promise<void> {
    const { ns, podLink, hostLink } = this.target;
    this.unregister ??= registerCleanup({ label: this.name, sync: () => this.removeSync() });
    await run("ip", ["netns", "exec", ns, "tc", ...this.qdiscArgs(podLink)]);
    await run("tc", this.qdiscArgs(hostLink));
  }

  private removeSync(): void {
    runSyncQuiet("ip", [
      "netns",
      "exec",
      this.target.ns,
      "tc",
      "qdisc",
      "del",
      "dev",
      this.target.podLink,
      "root",
    ]);
    runSyncQuiet("tc", ["qdisc", "del", "dev", this.target.hostLink, "root"]);
  }

  /** Time a download and an upload of `probeBytes` with a server in the pod's namespace. */
  async measure(): Promise<BandwidthEvidence> {
    const bytes = this.opts.probeBytes ?? 128 * 1024;
    const logFile = join(this.opts.logDir, `bandwidth-probe-${Date.now()}.log`);
    const proc = new ManagedProcess(
      "bandwidth-probe",
      "ip",
      ["netns", "exec", this.target.ns, process.execPath, "-e", POD_SERVER, this.target.ip, String(bytes)],
      logFile,
      childEnv(RUN_ENV, String(process.pid)),
    );
    try {
      let port = 0;
      await waitFor(
        "bandwidth probe server ready",
        () => {
          if (!proc.running) throw new WaitAborted(`probe ${proc.describeExit()}: ${proc.tail(500)}`);
          const m = /ready (\d+)/.exec(readFileSync(logFile, "utf8"));
          if (!m) return "not yet";
          port = Number(m[1]);
          return true;
        },
        { timeoutMs: scaled(15_000), intervalMs: 50 },
      );
      const mbit = (ms: number) => (bytes * 8) / 1e6 / (ms / 1000);
      const down = await this.transfer(port, "download", bytes);
      const up = await this.transfer(port, "upload", bytes);
      return { downloadMbit: mbit(down), uploadMbit: mbit(up) };
    } finally {
      await proc.stop(500);
    }
  }

  /** ms from connect to the last byte (download) or to the server's answer (upload). */
  private transfer(port: number, dir: "download" | "upload", bytes: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: this.target.ip, port });
      let t0 = 0;
      let got = 0;
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`${dir} of ${bytes} bytes did not finish in 60 s`));
      }, 60_000);
      s.once("connect", () => {
        t0 = performance.now();
        if (dir === "download") s.write("D");
        else s.end(Buffer.alloc(bytes, 121));
      });
      s.on("data", (d) => {
        got += d.length;
      });
      s.once("end", () => {
        clearTimeout(timer);
        s.destroy();
        if (dir === "download" && got < bytes) reject(new Error(`download got ${got}/${bytes} bytes`));
        else resolve(performance.now() - t0);
      });
      s.once("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  async verify(): Promise<BandwidthEvidence> {
    if (!this.active) throw new FaultNotInEffect(this.name, "not applied");
    const ev = await this.measure();
    const max = this.rateMbit * 1.5;
    if (ev.downloadMbit > max || ev.uploadMbit > max)
      throw new FaultNotInEffect(
        this.name,
        `measured download ${ev.downloadMbit.toFixed(2)} / upload ${ev.uploadMbit.toFixed(2)} Mbit/s (limit ${this.rateMbit})`,
      );
    return ev;
  }

  async remove(): Promise<void> {
    this.unregister?.();
    this.unregister = null;
    this.removeSync();
  }
}
