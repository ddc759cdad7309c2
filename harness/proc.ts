import { type ChildProcess, execFile, execFileSync, spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import type { Writable } from "node:stream";
import { registerCleanup } from "./cleanup.ts";

/**
 * Environment for a kvsync process started by the suite: the caller's, less every `KVSYNC_*`
 * variable (each CLI flag has one as its twin: a developer's shell must not reconfigure the
 * suite's engines and gateway), plus the run marker the sweeper looks for and the log level.
 */
export function childEnv(runMarker: string, runId: string): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("KVSYNC_")) env[k] = v;
  env[runMarker] = runId;
  env.KVSYNC_LOG_LEVEL = process.env.KVSYNC_E2E_LOG_LEVEL ?? "warn";
  return env;
}

/** Run a command, resolve with stdout; reject with its stderr in the message. */
export function run(cmd: string, args: string[], timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")} failed: ${String(stderr).trim() || err.message}`));
      else resolve(String(stdout));
    });
  });
}

/** Synchronous variant for exit handlers; never throws. */
export function runSyncQuiet(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { stdio: ["ignore", "pipe", "ignore"], timeout: 10_000 }).toString();
  } catch {
    return "";
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}

function killGroup(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  }
}

export interface SpawnExtras {
  /** where stdout and stderr go instead of `logFile`: an fd or stream (e.g. a FIFO a slow reader drains) */
  output?: number | Writable;
  /** "pipe" gives the parent `child.stdin` (default: no stdin) */
  stdin?: "ignore" | "pipe";
}

/**
 * A child process in its own process group (killed as a group), output to a log file. It is
 * registered for cleanup at once, so it never outlives the test process.
 */
export class ManagedProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | null = null;
  private readonly unregister: () => void;

  constructor(
    readonly label: string,
    cmd: string,
    args: string[],
    readonly logFile: string,
    env: NodeJS.ProcessEnv = process.env,
    extras: SpawnExtras = {},
  ) {
    const stdin = extras.stdin ?? "ignore";
    if (extras.output) {
      this.child = spawn(cmd, args, { detached: true, stdio: [stdin, extras.output, extras.output], env });
    } else {
      const fd = openSync(logFile, "a");
      try {
        this.child = spawn(cmd, args, { detached: true, stdio: [stdin, fd, fd], env });
      } finally {
        closeSync(fd);
      }
    }
    if (this.child.pid === undefined) throw new Error(`${label}: spawn ${cmd} failed`);
    this.pid = this.child.pid;
    this.exited = new Promise((resolve) => {
      this.child.once("exit", (code, signal) => {
        this.exitInfo = { code, signal };
        resolve(this.exitInfo);
      });
    });
    this.child.on("error", () => {});
    this.unregister = registerCleanup({
      label: `process ${label} (${this.pid})`,
      sync: () => killGroup(this.pid, "SIGKILL"),
      async: () => this.stop(),
    });
  }

  get running(): boolean {
    return this.exitInfo === null;
  }

  /** Last `bytes` of the log, for failure messages. */
  tail(bytes = 2000): string {
    try {
      const s = readFileSync(this.logFile, "utf8");
      return s.slice(-bytes);
    } catch {
      return "";
    }
  }

  describeExit(): string {
    if (!this.exitInfo) return "running";
    return `exited code=${this.exitInfo.code} signal=${this.exitInfo.signal}`;
  }

  /** SIGTERM the group, SIGKILL after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    this.unregister();
    if (!this.exitInfo) {
      killGroup(this.pid, "SIGTERM");
      let timer: NodeJS.Timeout | undefined;
      const killed = await Promise.race([
        this.exited.then(() => false),
        new Promise<boolean>((r) => {
          timer = setTimeout(() => r(true), graceMs);
        }),
      ]);
      clearTimeout(timer);
      if (killed) {
        killGroup(this.pid, "SIGKILL");
        await this.exited;
      }
    }
    // stray members of the group (e.g. workers) go too
    killGroup(this.pid, "SIGKILL");
  }

  /** Abrupt death, as a crashed engine or an OOM-killed pod. */
  async kill(): Promise<void> {
    this.unregister();
    killGroup(this.pid, "SIGKILL");
    if (!this.exitInfo) await this.exited;
  }
}
