/**
 * A real nats-server (Debian's package, `.ci/run` installs it) started by the test itself on a
 * free loopback port, restartable on the same port, stopped (SIGTERM, then SIGKILL) at the end:
 * a ManagedProcess of the E2E harness, so it never outlives the test process.
 */
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "../src/util/free-port.ts";
import { WaitAborted, waitFor } from "../src/util/wait.ts";
import { registerCleanup } from "./cleanup.ts";
import { ManagedProcess } from "./proc.ts";

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
  private proc: ManagedProcess | null = null;

  private constructor(
    readonly port: number,
    private readonly logFile: string,
  ) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** On a free port; its output goes to a log under `logDir` (default: a temporary one, removed at exit). */
  static async start(logDir?: string): Promise<NatsServer> {
    let dir = logDir;
    if (dir === undefined) {
      const tmp = mkdtempSync(join(tmpdir(), "kvsync-nats-"));
      registerCleanup({
        label: `nats-server log ${tmp}`,
        sync: () => rmSync(tmp, { recursive: true, force: true }),
      });
      dir = tmp;
    }
    const port = await freePort();
    const s = new NatsServer(port, join(dir, `nats-server-${port}.log`));
    await s.resume();
    return s;
  }

  get running(): boolean {
    return this.proc?.running ?? false;
  }

  /** Start (again) on the same port. */
  async resume(): Promise<void> {
    if (this.running) return;
    // a process group of its own, stopped with the test process at the latest (harness/proc.ts)
    const p = new ManagedProcess(
      "nats-server",
      natsServerPath(),
      ["-a", "127.0.0.1", "-p", String(this.port)],
      this.logFile,
    );
    this.proc = p;
    await waitFor(
      `nats-server on ${this.port} accepts connections`,
      async () => {
        if (!p.running) throw new WaitAborted(`nats-server ${p.describeExit()}: ${p.tail()}`);
        return (await accepts(this.port)) || "not yet";
      },
      { timeoutMs: 20_000, intervalMs: 20 },
    );
  }

  /** Stop it (SIGTERM, SIGKILL after 5 s); the port stays reserved for resume(). */
  async stop(): Promise<void> {
    const p = this.proc;
    if (p === null || !p.running) return;
    await p.stop(5_000);
    this.proc = null;
  }
}
