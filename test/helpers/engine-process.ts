/**
 * `kvsync mock-engine` as a real child process, for what only a process shows: SIGSTOP/SIGCONT
 * faults, the CLI's flags, a clean exit on SIGTERM. The one place tests spawn it.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { waitFor } from "../../src/util/wait.ts";

export interface EngineProcess {
  child: ChildProcess;
  pid: number;
  http: string;
  events: string | null;
  replay: string | null;
  /** what the engine logged (info level): the first 64 KiB and the last 64 KiB */
  stderr(): string;
  stop(): void;
  resume(): void;
  close(): Promise<void>;
}

/** Where the engine listens: HTTP port (0 = ephemeral) and the ZeroMQ endpoints it binds. */
export interface EngineListen {
  port: number;
  events: string;
  replay: string;
}

/** Loopback, ephemeral ports; the engine.started line says which. */
export const EPHEMERAL: EngineListen = { port: 0, events: "tcp://127.0.0.1:*", replay: "tcp://127.0.0.1:*" };

const KEEP = 64 * 1024;

const live = new Set<ChildProcess>();
// a stopped child must never outlive the test process, whatever ends it
process.once("exit", () => {
  for (const c of live) {
    try {
      c.kill("SIGCONT");
      c.kill("SIGKILL");
    } catch {
      // gone
    }
  }
});

/**
 * Start `kvsync mock-engine <listen> <args>` and wait for its engine.started line;
 * `startTimeoutMs`: how long the child may take to log it (tsx compiles the CLI first).
 */
export async function startEngineProcess(
  args: string[] = [],
  listen: EngineListen = EPHEMERAL,
  startTimeoutMs = 60_000,
): Promise<EngineProcess> {
  const child = spawn(
    process.execPath,
    [
      "--import",
      "tsx",
      "src/cli.ts",
      "mock-engine",
      "--host",
      "127.0.0.1",
      "--port",
      String(listen.port),
      "--events-endpoint",
      listen.events,
      "--replay-endpoint",
      listen.replay,
      ...args,
    ],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, KVSYNC_LOG_LEVEL: "info" } },
  );
  live.add(child);
  // the head (the started line) and a bounded tail (the last words before an exit)
  let head = "";
  let tail = "";
  child.stderr!.on("data", (d: Buffer) => {
    if (head.length < KEEP) head += d.toString();
    else tail = (tail + d.toString()).slice(-KEEP);
  });
  const stderr = () => head + tail;
  const close = async () => {
    live.delete(child);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill("SIGCONT");
    child.kill("SIGKILL");
    await exited;
  };
  try {
    // a generous bound: on a loaded 2-core machine two engines starting at once (tsx compiling
    // the CLI in each) have taken over 30 s
    await waitFor(
      "the engine.started log line",
      () => head.includes('"event":"engine.started"') || child.exitCode !== null,
      startTimeoutMs,
    );
    if (child.exitCode !== null)
      throw new Error(`mock-engine exited ${child.exitCode}: ${stderr().slice(-2000)}`);
  } catch (err) {
    await close();
    throw err;
  }
  const line = head.split("\n").find((l) => l.includes('"event":"engine.started"'))!;
  const info = JSON.parse(line) as {
    http: string;
    events: Array<string | null>;
    replay: Array<string | null>;
  };
  return {
    child,
    pid: child.pid!,
    http: info.http,
    events: info.events[0] ?? null,
    replay: info.replay[0] ?? null,
    stderr,
    stop: () => child.kill("SIGSTOP"),
    resume: () => child.kill("SIGCONT"),
    close,
  };
}

/** True when `url` answers a GET within `timeoutMs` (the fault check: a stopped engine does not). */
export async function answers(url: string, timeoutMs: number): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    await r.arrayBuffer();
    return true;
  } catch {
    return false;
  }
}

/** `vllm:num_requests_running` of an engine's /metrics. */
export async function engineRunning(http: string): Promise<number> {
  const text = await (await fetch(`${http}/metrics`, { signal: AbortSignal.timeout(2_000) })).text();
  let n = 0;
  for (const l of text.split("\n"))
    if (l.startsWith("vllm:num_requests_running")) n += Number(l.split(" ").pop());
  return n;
}
