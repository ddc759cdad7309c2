/** `kvsync mock-engine` as a real child process, for faults only a process has (SIGSTOP/SIGCONT). */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { waitFor } from "../../../src/util/wait.ts";

export interface EngineProcess {
  child: ChildProcess;
  pid: number;
  http: string;
  events: string | null;
  replay: string | null;
  stop(): void;
  resume(): void;
  close(): Promise<void>;
}

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

/** `startTimeoutMs`: how long the child may take to log engine.started (tsx compiles it first). */
export async function startEngineProcess(
  args: string[] = [],
  startTimeoutMs = 30_000,
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
      "0",
      "--events-endpoint",
      "tcp://127.0.0.1:*",
      "--replay-endpoint",
      "tcp://127.0.0.1:*",
      ...args,
    ],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, KVSYNC_LOG_LEVEL: "info" } },
  );
  live.add(child);
  let stderr = "";
  child.stderr!.on("data", (d: Buffer) => {
    // keep the head (the started line) and a bounded tail
    stderr = stderr.length < 64 * 1024 ? stderr + d.toString() : stderr;
  });
  const close = async () => {
    live.delete(child);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, "exit");
    child.kill("SIGCONT");
    child.kill("SIGKILL");
    await exited;
  };
  try {
    await waitFor(
      "the engine.started log line",
      () => stderr.includes('"event":"engine.started"') || child.exitCode !== null,
      startTimeoutMs,
    );
    if (child.exitCode !== null)
      throw new Error(`mock-engine exited ${child.exitCode}: ${stderr.slice(-2000)}`);
  } catch (err) {
    await close();
    throw err;
  }
  const line = stderr.split("\n").find((l) => l.includes('"event":"engine.started"'))!;
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
