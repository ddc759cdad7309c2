/**
 * A real nats-server (Debian's package, `.ci/run` installs it) started by the test itself on a
 * free loopback port, restartable on the same port, stopped (SIGTERM, then SIGKILL) at the end.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { freePort } from "../../src/util/free-port.ts";
import { waitFor } from "../../src/util/wait.ts";

const CANDIDATES = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];

export function natsServerPath(): string {
  const p = process.env.KVSYNC_NATS_SERVER ?? CANDIDATES.find((c) => existsSync(c));
  if (p === undefined) throw new Error("nats-server not found: apt-get install nats-server (.ci/run does)");
  return p;
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = tcpConnect({ host: "127.0.0.1", port });
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}

export class NatsServer {
  private proc: ChildProcess | null = null;
  private log = "";

  private constructor(readonly port: number) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<NatsServer> {
    const s = new NatsServer(await freePort());
    await s.resume();
    return s;
  }

  get running(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Start (again) on the same port. */
  async resume(): Promise<void> {
    if (this.running) return;
    const p = spawn(natsServerPath(), ["-a", "127.0.0.1", "-p", String(this.port)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.proc = p;
    const keep = (d: Buffer) => {
      this.log = (this.log + d.toString()).slice(-4000);
    };
    p.stdout?.on("data", keep);
    p.stderr?.on("data", keep);
    await waitFor(
      `nats-server on ${this.port} accepts connections`,
      async () => {
        if (p.exitCode !== null) throw new Error(`nats-server exited ${p.exitCode}: ${this.log}`);
        return (await accepts(this.port)) || "not yet";
      },
      { timeoutMs: 20_000, intervalMs: 20 },
    );
  }

  /** Stop it (the port stays reserved for resume()). */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p === null || !this.running) return;
    const exited = new Promise<void>((r) => p.once("exit", () => r()));
    p.kill("SIGTERM");
    const t = setTimeout(() => p.kill("SIGKILL"), 5_000);
    await exited;
    clearTimeout(t);
    this.proc = null;
  }
}
