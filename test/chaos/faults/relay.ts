/**
 * Network delay (500 ms ± 100 ms jitter) and connection corruption (50 % of the event stream's
 * packets get bytes flipped), through a userspace TCP relay: this kernel has no netem, and
 * corruption that reaches the application (rather than failing TCP checksums, as netem's
 * `corrupt` mostly does) is what tests the subscriber's decoder.
 *
 * How traffic reaches it: a sidecar per pod, Toxiproxy-style. `RelaySidecar.start` runs
 * relay-main.ts inside the pod's network namespace, listening on the pod's address at
 * `listenPort`s (default 18000 / 15557 / 15558) and forwarding to the engine's ports (8000 /
 * 5557 / 5558); `relayAnnotations()` gives the Pod annotations (kvsync.io/http-port,
 * kvsync.io/kv-events-port, kvsync.io/kv-replay-port) that point kvsync at the relay. Create the
 * pods with those annotations, then start the sidecars: the gateway's connects are refused until
 * the relay listens, and then go through it for the pod's whole life. The relay is always in
 * the path (passthrough until a fault is on), so turning a fault on or off never needs an
 * existing connection reset, which an nft redirect would (conntrack keeps old flows on their
 * old path). The cost: one more hop (sub-millisecond) on every pod's traffic, and the relay is a
 * process of its own (registered with the harness cleanup; it dies with the pod's namespace).
 * Control: newline-delimited JSON on a unix socket (unix sockets cross network namespaces, so
 * a partition of the pod never cuts the control channel).
 *
 * Faults on a sidecar (they change the relay's mode only: nothing outlives the relay process,
 * which the harness cleanup kills):
 * - `RelayDelay`: delays the pod's egress ("down": engine -> gateway) by 500 ± 100 ms, order
 *   kept, as netem on the pod's interface does (Chaos Mesh NetworkChaos `delay`); so a request's
 *   round trip grows by ~500 ms. Verify: timed GET /health through the relay, median in
 *   500 ± 100 ms plus a small allowance for the machine. Remove: passthrough (queued chunks
 *   still leave in order).
 * - `RelayCorruption`: each chunk the engine sends on the events route is, with probability 0.5,
 *   given 1-3 flipped bytes. Verify: the relay's counters show corrupted chunks since apply
 *   (traffic must flow: the engines publish events). Remove: passthrough.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { childEnv, ManagedProcess } from "../../../harness/proc.ts";
import { EVENTS_PORT, HTTP_PORT, REPLAY_PORT } from "../../e2e/harness/cluster.ts";
import { RUN_ENV } from "../../e2e/harness/netns.ts";
import { scaled, WaitAborted, waitFor } from "../../e2e/harness/wait.ts";
import { type Fault, FaultNotInEffect, httpProbe } from "./fault.ts";
import type { Command, RelayMode, RelayStats } from "./relay-main.ts";

export type { RelayMode, RelayStats };

const MAIN = fileURLToPath(new URL("./relay-main.ts", import.meta.url));

export interface RelayRoute {
  name: string;
  listenPort: number;
  targetPort: number;
}

export const DEFAULT_ROUTES: RelayRoute[] = [
  { name: "http", listenPort: 18000, targetPort: HTTP_PORT },
  { name: "events", listenPort: 15557, targetPort: EVENTS_PORT },
  { name: "replay", listenPort: 15558, targetPort: REPLAY_PORT },
];

/** Pod annotations that send kvsync through relays on DEFAULT_ROUTES' ports. */
export function relayAnnotations(routes: RelayRoute[] = DEFAULT_ROUTES): Record<string, string> {
  const key: Record<string, string> = {
    http: "kvsync.io/http-port",
    events: "kvsync.io/kv-events-port",
    replay: "kvsync.io/kv-replay-port",
  };
  const out: Record<string, string> = {};
  for (const r of routes) if (key[r.name]) out[key[r.name]] = String(r.listenPort);
  return out;
}

export class RelaySidecar {
  private readonly unregister: () => void;

  private constructor(
    readonly ip: string,
    readonly routes: RelayRoute[],
    readonly process: ManagedProcess,
    private readonly dir: string,
  ) {
    this.unregister = registerCleanup({
      label: `relay dir ${dir}`,
      sync: () => rmSync(dir, { recursive: true, force: true }),
    });
  }

  get controlPath(): string {
    return join(this.dir, "ctl.sock");
  }

  /** Start a relay in namespace `ns` listening on `ip`, forwarding each route to `ip`:targetPort. */
  static async start(o: {
    ns: string;
    ip: string;
    logDir: string;
    routes?: RelayRoute[];
  }): Promise<RelaySidecar> {
    const routes = o.routes ?? DEFAULT_ROUTES;
    const dir = mkdtempSync(join(tmpdir(), "kvsync-relay-"));
    const args = ["--control", join(dir, "ctl.sock")];
    for (const r of routes) args.push("--route", `${r.name}=${o.ip}:${r.listenPort}=${o.ip}:${r.targetPort}`);
    const proc = new ManagedProcess(
      `relay-${o.ip}`,
      "ip",
      ["netns", "exec", o.ns, process.execPath, "--import", "tsx", MAIN, ...args],
      join(o.logDir, `relay-${o.ip}-${Date.now()}.log`),
      childEnv(RUN_ENV, String(process.pid)),
    );
    const relay = new RelaySidecar(o.ip, routes, proc, dir);
    await waitFor(
      `relay ${o.ip} control answers`,
      async () => {
        if (!proc.running) throw new WaitAborted(`relay ${proc.describeExit()}: ${proc.tail(800)}`);
        const listening = (proc.tail(4000).match(/^relay \w+ /gm) ?? []).length;
        if (listening < routes.length) return `${listening}/${routes.length} routes listening`;
        await relay.stats();
        return true;
      },
      { timeoutMs: scaled(30_000), intervalMs: 100 },
    );
    return relay;
  }

  port(route: string): number {
    const r = this.routes.find((x) => x.name === route);
    if (!r) throw new Error(`relay has no route ${route}`);
    return r.listenPort;
  }

  private async send(cmd: Command): Promise<{ ok: boolean; stats?: RelayStats; error?: string }> {
    return new Promise((resolve, reject) => {
      const s = connect(this.controlPath);
      let buf = "";
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error(`relay ${this.ip}: control timed out`));
      }, 5000);
      s.on("error", (err) => {
        clearTimeout(timer);
        reject(err);
      });
      s.on("data", (d) => {
        buf += d.toString();
        const nl = buf.indexOf("\n");
        if (nl === -1) return;
        clearTimeout(timer);
        s.destroy();
        resolve(JSON.parse(buf.slice(0, nl)));
      });
      s.write(`${JSON.stringify(cmd)}\n`);
    });
  }

  async setMode(mode: RelayMode): Promise<void> {
    const r = await this.send({ cmd: "set", mode });
    if (!r.ok) throw new Error(`relay ${this.ip}: ${r.error}`);
  }

  async stats(): Promise<RelayStats> {
    const r = await this.send({ cmd: "stats" });
    if (!r.ok || !r.stats) throw new Error(`relay ${this.ip}: ${r.error}`);
    return r.stats;
  }

  /** Reset every relayed connection (both sides see a reset). */
  async resetConnections(): Promise<void> {
    await this.send({ cmd: "reset" });
  }

  async stop(): Promise<void> {
    await this.process.stop(1000);
    this.unregister();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface DelayEvidence {
  /** round trips of GET /health through the relay, ms */
  rttMs: number[];
  medianMs: number;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

export class RelayDelay implements Fault<DelayEvidence> {
  readonly name: string;
  private on = false;

  constructor(
    readonly relay: RelaySidecar,
    readonly opts: { delayMs?: number; jitterMs?: number; both?: boolean } = {},
  ) {
    this.name = `delay ${this.delayMs}±${this.jitterMs}ms via relay ${relay.ip}`;
  }

  get delayMs(): number {
    return this.opts.delayMs ?? 500;
  }
  get jitterMs(): number {
    return this.opts.jitterMs ?? 100;
  }
  get active(): boolean {
    return this.on;
  }

  async apply(): Promise<void> {
    await this.relay.setMode({
      kind: "delay",
      delayMs: this.delayMs,
      jitterMs: this.jitterMs,
      directions: this.opts.both ? ["up", "down"] : ["down"],
    });
    this.on = true;
  }

  /** Round trips of GET /health through the relay's http route. */
  async measure(samples = 5): Promise<number[]> {
    const url = `http://${this.relay.ip}:${this.relay.port("http")}/health`;
    const out: number[] = [];
    for (let i = 0; i < samples; i++) {
      const r = await httpProbe(url, 10_000);
      if (!r.ok) throw new Error(`GET ${url} through the relay: ${r.error ?? r.status}`);
      out.push(r.ms);
    }
    return out;
  }

  async verify(): Promise<DelayEvidence> {
    if (!this.on) throw new FaultNotInEffect(this.name, "not applied");
    const rttMs = await this.measure();
    const m = median(rttMs);
    const lo = this.delayMs - this.jitterMs;
    // + jitter, and 250 ms for the engine's answer on a busy machine (a median of 654 ms was seen
    // at a load average of 20); the lower bound is what proves the delay
    const hi = this.delayMs + this.jitterMs + 250;
    if (m < lo || m > hi)
      throw new FaultNotInEffect(
        this.name,
        `median RTT ${m.toFixed(0)} ms (samples ${rttMs.map((x) => x.toFixed(0))})`,
      );
    return { rttMs, medianMs: m };
  }

  async remove(): Promise<void> {
    this.on = false;
    await this.relay.setMode({ kind: "passthrough" });
  }
}

export interface CorruptionEvidence {
  corruptedChunks: number;
  corruptedBytes: number;
  chunks: number;
}

export class RelayCorruption implements Fault<CorruptionEvidence> {
  readonly name: string;
  private base: RelayStats | null = null;

  constructor(
    readonly relay: RelaySidecar,
    readonly opts: { probability?: number; routes?: string[] } = {},
  ) {
    this.name = `corrupt ${(this.probability * 100).toFixed(0)}% of ${(opts.routes ?? ["events"]).join("+")} via relay ${relay.ip}`;
  }

  get probability(): number {
    return this.opts.probability ?? 0.5;
  }
  get active(): boolean {
    return this.base !== null;
  }

  async apply(): Promise<void> {
    this.base = await this.relay.stats();
    await this.relay.setMode({
      kind: "corrupt",
      probability: this.probability,
      routes: this.opts.routes ?? ["events"],
      directions: ["down"],
    });
  }

  /** Waits (up to `timeoutMs`) until traffic through the relay got corrupted since apply. */
  async verify(timeoutMs = 10_000): Promise<CorruptionEvidence> {
    const base = this.base;
    if (!base) throw new FaultNotInEffect(this.name, "not applied");
    let ev: CorruptionEvidence = { corruptedChunks: 0, corruptedBytes: 0, chunks: 0 };
    await waitFor(
      `${this.name} corrupts traffic`,
      async () => {
        const s = await this.relay.stats();
        ev = {
          corruptedChunks: s.corruptedChunks - base.corruptedChunks,
          corruptedBytes: s.corruptedBytes - base.corruptedBytes,
          chunks: s.chunks.down - base.chunks.down,
        };
        return ev.corruptedChunks > 0 ? true : `${ev.chunks} chunks relayed, none corrupted`;
      },
      { timeoutMs: scaled(timeoutMs), intervalMs: 100 },
    ).catch((err: Error) => {
      throw new FaultNotInEffect(this.name, err.message);
    });
    return ev;
  }

  async remove(): Promise<void> {
    this.base = null;
    await this.relay.setMode({ kind: "passthrough" });
  }
}
