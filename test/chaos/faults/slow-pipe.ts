/**
 * IO stress, 100 ms delay on 50 % of IO (Chaos Mesh IOChaos `latency`, delay 100ms, percent 50),
 * on the gateway's log: its stdout and stderr (pino, which writes synchronously to fd 2) go into
 * a FIFO drained by a reader process that, while the fault is on, sleeps 100 ms before half of
 * its reads. This finds out whether slow log IO stalls routing: once the pipe is full, every
 * log write blocks the gateway's event loop until the reader reads again.
 *
 * Why this mechanism: IOChaos injects latency into a volume's syscalls through a FUSE proxy; the
 * gateway's only steady IO is its log, and a pipe gives the same effect (write(2) blocks while
 * the other side is slow) without FUSE. The pipe is shrunk to one page (4 KB, F_SETPIPE_SZ via
 * perl: Node has no fcntl) so a write blocks after ~4 KB of backlog, close to "each write may
 * wait", rather than after 64 KB.
 *
 * Lifecycle: `SlowPipe.start()` before the gateway (the pipe is always in the path, passthrough
 * until apply); give `pipe.fd` as `GatewayOptions.output`. The test process keeps the FIFO open
 * read-write (so opening never blocks and a restarted gateway can reuse it); the drained bytes
 * land in `logFile`. The reader and the FIFO are registered with the harness cleanup.
 *
 * Verify: the reader's counters (delayed reads since apply) and a probe process that writes
 * 64 KB into the pipe in 512-byte writes: it takes >= 300 ms (16 pipe-fulls, half of them after
 * a 100 ms sleep: ~800 ms expected), against a few ms without the fault. Remove: probability 0.
 */
import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { registerCleanup } from "../../../harness/cleanup.ts";
import { childEnv, ManagedProcess } from "../../../harness/proc.ts";
import { RUN_ENV } from "../../e2e/harness/netns.ts";
import { scaled, WaitAborted, waitFor } from "../../e2e/harness/wait.ts";
import { type Fault, FaultNotInEffect } from "./fault.ts";
import type { SlowPipeStats } from "./slow-pipe-main.ts";

export type { SlowPipeStats };

const MAIN = fileURLToPath(new URL("./slow-pipe-main.ts", import.meta.url));
const F_SETPIPE_SZ = 1031;

// Writes `bytes` into the FIFO in `chunk`-byte writes, synchronously as pino does; prints ms.
const WRITER = `
const fs = require("node:fs");
const [path, bytes, chunk] = process.argv.slice(1);
const fd = fs.openSync(path, "w");
const line = Buffer.alloc(Number(chunk), 46);
line.write('{"event":"chaos_io_probe"}');
line[line.length - 1] = 10;
const t0 = performance.now();
for (let n = 0; n < Number(bytes); n += line.length) fs.writeSync(fd, line);
console.log("wrote " + (performance.now() - t0).toFixed(1));
`;

export interface SlowPipeEvidence {
  /** ms the probe's 64 KB of writes took */
  probeWriteMs: number;
  /** reads / delayed reads of the reader since apply */
  reads: number;
  delayedReads: number;
}

export class SlowPipe implements Fault<SlowPipeEvidence> {
  readonly name: string;
  private base: SlowPipeStats | null = null;
  private readonly unregister: () => void;

  private constructor(
    readonly fifo: string,
    /** the FIFO opened read-write: give it to the writer as its stdout/stderr */
    readonly fd: number,
    readonly reader: ManagedProcess,
    readonly logFile: string,
    private readonly dir: string,
    readonly opts: { delayMs: number; probability: number; logDir: string },
  ) {
    this.name = `slow log pipe ${opts.delayMs}ms on ${opts.probability * 100}% of reads`;
    this.unregister = registerCleanup({ label: `slow pipe ${fifo}`, sync: () => this.closeSync() });
  }

  static async start(o: {
    logDir: string;
    /** where the drained bytes go (e.g. the gateway's log file) */
    logFile: string;
    delayMs?: number;
    probability?: number;
    pipeBytes?: number;
  }): Promise<SlowPipe> {
    const dir = mkdtempSync(join(tmpdir(), "kvsync-slowpipe-"));
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    // O_RDWR: on Linux opening a FIFO read-write never waits for the other side
    const fd = openSync(fifo, "r+");
    execFileSync("perl", [
      "-e",
      `open(my $f, "+<", $ARGV[0]) or die "open: $!"; fcntl($f, ${F_SETPIPE_SZ}, ${o.pipeBytes ?? 4096}) or die "F_SETPIPE_SZ: $!";`,
      fifo,
    ]);
    const control = join(dir, "ctl.sock");
    const reader = new ManagedProcess(
      "slow-pipe-reader",
      process.execPath,
      ["--import", "tsx", MAIN, "--fifo", fifo, "--out", o.logFile, "--control", control],
      join(o.logDir, `slow-pipe-reader-${Date.now()}.log`),
      childEnv(RUN_ENV, String(process.pid)),
    );
    const pipe = new SlowPipe(fifo, fd, reader, o.logFile, dir, {
      delayMs: o.delayMs ?? 100,
      probability: o.probability ?? 0.5,
      logDir: o.logDir,
    });
    await waitFor(
      "slow pipe reader control answers",
      async (): Promise<true> => {
        if (!reader.running) throw new WaitAborted(`reader ${reader.describeExit()}: ${reader.tail(800)}`);
        await pipe.stats();
        return true;
      },
      { timeoutMs: scaled(30_000), intervalMs: 100 },
    );
    return pipe;
  }

  private get control(): string {
    return join(this.dir, "ctl.sock");
  }

  private send(cmd: object): Promise<SlowPipeStats> {
    return new Promise((resolve, reject) => {
      const s = connect(this.control);
      let buf = "";
      const timer = setTimeout(() => {
        s.destroy();
        reject(new Error("slow pipe control timed out"));
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
        const r = JSON.parse(buf.slice(0, nl)) as { ok: boolean; stats: SlowPipeStats; error?: string };
        if (r.ok) resolve(r.stats);
        else reject(new Error(r.error));
      });
      s.write(`${JSON.stringify(cmd)}\n`);
    });
  }

  stats(): Promise<SlowPipeStats> {
    return this.send({ cmd: "stats" });
  }

  get active(): boolean {
    return this.base !== null;
  }

  async apply(): Promise<void> {
    this.base = await this.send({
      cmd: "set",
      delayMs: this.opts.delayMs,
      probability: this.opts.probability,
    });
  }

  /** ms a separate process takes to write `bytes` into the pipe in `chunk`-byte writes. */
  async probeWrite(bytes = 64 * 1024, chunk = 512): Promise<number> {
    const log = join(this.opts.logDir, `slow-pipe-probe-${Date.now()}.log`);
    const p = new ManagedProcess(
      "slow-pipe-probe",
      process.execPath,
      ["-e", WRITER, this.fifo, String(bytes), String(chunk)],
      log,
      childEnv(RUN_ENV, String(process.pid)),
    );
    const exit = await Promise.race([
      p.exited,
      new Promise<null>((r) => setTimeout(() => r(null), scaled(30_000))),
    ]);
    if (!exit) await p.kill();
    const m = /wrote ([\d.]+)/.exec(readFileSync(log, "utf8"));
    if (!m) throw new Error(`slow pipe probe failed: ${p.describeExit()} ${p.tail(500)}`);
    return Number(m[1]);
  }

  async verify(): Promise<SlowPipeEvidence> {
    const base = this.base;
    if (!base) throw new FaultNotInEffect(this.name, "not applied");
    const probeWriteMs = await this.probeWrite();
    const s = await this.stats();
    const ev = {
      probeWriteMs,
      reads: s.reads - base.reads,
      delayedReads: s.delayedReads - base.delayedReads,
    };
    if (probeWriteMs < 300 || ev.delayedReads === 0)
      throw new FaultNotInEffect(
        this.name,
        `64 KB written in ${probeWriteMs} ms, ${ev.delayedReads}/${ev.reads} reads delayed`,
      );
    return ev;
  }

  async remove(): Promise<void> {
    this.base = null;
    await this.send({ cmd: "set", probability: 0 });
  }

  private closeSync(): void {
    try {
      closeSync(this.fd);
    } catch {
      // closed already
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Stop the reader and close the FIFO (after the writer is gone). */
  async stop(): Promise<void> {
    this.unregister();
    await this.reader.stop(1000);
    this.closeSync();
  }
}
