/**
 * Mock engines (src/engine) for the events tests: started in-process on fixed ports so they can
 * be restarted on the same addresses, with helpers to read their truth and write engines files.
 */
import { writeFileSync } from "node:fs";
import { createServer } from "node:net";
import type { EngineOptions } from "../../../src/engine/options.ts";
import { type RunningEngine, startEngine } from "../../../src/engine/start.ts";
import { silentLogger } from "../../../src/util/log.ts";

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "0.0.0.0", () => s.close(() => resolve(true)));
  });
}

/** `n` consecutive free TCP ports (checked, not reserved). */
export async function freePorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await portFree(base + i);
    if (ok) return base;
  }
  throw new Error(`no ${n} consecutive free ports`);
}

export interface TestEngine {
  name: string;
  opts: Partial<EngineOptions>;
  http: number;
  events: number;
  replay: number;
  running: RunningEngine | null;
  url: string;
}

/** Start (or restart on the same ports) a mock engine. */
export async function startTestEngine(
  name: string,
  opts: Partial<EngineOptions>,
  ports?: { http: number; events: number; replay: number },
): Promise<TestEngine> {
  const dp = opts.dataParallelSize ?? 1;
  const p = ports ?? { http: await freePorts(1), events: await freePorts(dp), replay: await freePorts(dp) };
  const running = await startEngine({
    host: "127.0.0.1",
    port: p.http,
    eventsEndpoint: `tcp://*:${p.events}`,
    replayEndpoint: `tcp://*:${p.replay}`,
    log: silentLogger(),
    ...opts,
  });
  return { name, opts, ...p, running, url: running.httpUrl };
}

export async function restartTestEngine(e: TestEngine): Promise<void> {
  await e.running?.close();
  e.running = null;
  // ZeroMQ releases a closed socket's port in its I/O thread, a little after close() returns
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      const again = await startTestEngine(e.name, e.opts, {
        http: e.http,
        events: e.events,
        replay: e.replay,
      });
      e.running = again.running;
      return;
    } catch (err) {
      if (!/in use/i.test(String((err as Error).message)) || Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

export function engineEntry(e: TestEngine, model = "Qwen/Qwen3-0.6B") {
  return {
    name: e.name,
    model,
    http: `http://127.0.0.1:${e.http}`,
    events: `tcp://127.0.0.1:${e.events}`,
    replay: `tcp://127.0.0.1:${e.replay}`,
    dataParallelSize: e.opts.dataParallelSize ?? 1,
    ...(e.opts.loraModules?.length ? { loras: e.opts.loraModules } : {}),
  };
}

export function writeEngines(file: string, engines: TestEngine[]): void {
  writeFileSync(file, JSON.stringify({ engines: engines.map((e) => engineEntry(e)) }, null, 2));
}

export async function engineTruth(
  e: TestEngine,
  rank?: number,
): Promise<Array<{ hash: string; tiers: string[] }>> {
  const r = await fetch(`${e.url}/debug/kv-cache${rank === undefined ? "" : `?rank=${rank}`}`);
  if (!r.ok) throw new Error(`debug/kv-cache: ${r.status}`);
  const body = (await r.json()) as { blocks: Array<{ hash: string; tiers: string[] }> };
  return body.blocks
    .map((b) => ({ hash: b.hash, tiers: [...b.tiers].sort() }))
    .sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
}

export async function complete(
  e: TestEngine,
  prompt: number[] | string,
  maxTokens = 4,
  model = "Qwen/Qwen3-0.6B",
): Promise<{ status: number; body: { usage?: { prompt_tokens: number } } }> {
  const r = await fetch(`${e.url}/v1/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens }),
  });
  return { status: r.status, body: (await r.json()) as { usage?: { prompt_tokens: number } } };
}
