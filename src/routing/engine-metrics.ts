import { request } from "undici";
import type { Logger } from "../util/log.ts";
import type { EngineLoad, EngineLoadSource } from "./load.ts";

const NAMES = {
  "vllm:num_requests_waiting": "waiting",
  "vllm:num_requests_running": "running",
  "vllm:kv_cache_usage_perc": "kvUsage",
  // older vLLM name of the same gauge
  "vllm:gpu_cache_usage_perc": "kvUsage",
} as const;

const LINE_RE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/;
const ENGINE_RE = /engine="(\d+)"/;

/**
 * Parse the vLLM gauges the router uses from Prometheus text. Returns the whole-pod figures
 * (summed over engines; KV usage averaged) and, when lines carry an `engine` label, per rank.
 */
export function parseEngineMetrics(text: string): { pod: EngineLoad; ranks: Map<number, EngineLoad> } | null {
  const pod: EngineLoad = { waiting: 0, running: 0, kvUsage: 0 };
  const ranks = new Map<number, EngineLoad>();
  let seen = 0;
  let kvLines = 0;
  for (const line of text.split("\n")) {
    if (line.length === 0 || line.charCodeAt(0) === 35 /* # */) continue;
    const m = LINE_RE.exec(line);
    if (m === null) continue;
    const field = NAMES[m[1] as keyof typeof NAMES];
    if (field === undefined) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    seen++;
    const e = m[2] === undefined ? null : ENGINE_RE.exec(m[2]);
    if (e !== null) {
      const r = Number(e[1]);
      let rl = ranks.get(r);
      if (rl === undefined) {
        rl = { waiting: 0, running: 0, kvUsage: 0 };
        ranks.set(r, rl);
      }
      rl[field] = v;
    }
    if (field === "kvUsage") {
      pod.kvUsage += v;
      kvLines++;
    } else pod[field] += v;
  }
  if (seen === 0) return null;
  if (kvLines > 0) pod.kvUsage /= kvLines;
  return { pod, ranks };
}

interface Sample {
  at: number;
  pod: EngineLoad;
  ranks: Map<number, EngineLoad>;
}

export interface EngineMetricsScraperOptions {
  intervalMs: number;
  timeoutMs: number;
  log: Logger;
  /** called after each scrape attempt (metrics) */
  onScrape?: (pod: string, ok: boolean) => void;
  /** called with each scrape's text (the pod's other figures, e.g. its container's pressure) */
  onText?: (pod: string, text: string) => void;
}

/**
 * Polls each pod's `/metrics` every `intervalMs`. Samples older than 3 intervals are ignored, so
 * a pod that stops answering falls back to this gateway's own load figures.
 */
export class EngineMetricsScraper implements EngineLoadSource {
  private readonly samples = new Map<string, Sample>();
  private pods = new Map<string, string>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private readonly inflight = new Set<AbortController>();

  constructor(private readonly o: EngineMetricsScraperOptions) {}

  /** pod name → http base URL */
  setPods(pods: Iterable<{ name: string; http: string }>): void {
    const next = new Map<string, string>();
    for (const p of pods) next.set(p.name, p.http);
    for (const name of this.samples.keys()) if (!next.has(name)) this.samples.delete(name);
    this.pods = next;
  }

  start(): void {
    if (this.timer !== null) return;
    const tick = () => {
      void this.scrapeAll().finally(() => {
        if (this.timer !== null) this.timer = setTimeout(tick, this.o.intervalMs);
      });
    };
    this.timer = setTimeout(tick, 0);
  }

  async scrapeAll(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      await Promise.all([...this.pods].map(([name, http]) => this.scrape(name, http)));
    } finally {
      this.running = false;
    }
  }

  private async scrape(name: string, http: string): Promise<void> {
    const ac = new AbortController();
    this.inflight.add(ac);
    const t = setTimeout(() => ac.abort(), this.o.timeoutMs);
    try {
      const res = await request(new URL("/metrics", http), { signal: ac.signal });
      const text = await res.body.text();
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}`);
      const parsed = parseEngineMetrics(text);
      if (parsed !== null && this.pods.has(name))
        this.samples.set(name, { at: performance.now(), ...parsed });
      this.o.onScrape?.(name, parsed !== null);
      if (this.pods.has(name)) this.o.onText?.(name, text);
    } catch (err) {
      this.o.onScrape?.(name, false);
      this.o.log.debug(
        { event: "gateway.scrape_failed", pod: name, err: String(err) },
        "engine metrics scrape failed",
      );
    } finally {
      clearTimeout(t);
      this.inflight.delete(ac);
    }
  }

  engineLoad(pod: string, rank: number | null): EngineLoad | undefined {
    const s = this.samples.get(pod);
    if (s === undefined || performance.now() - s.at > 3 * this.o.intervalMs + this.o.timeoutMs)
      return undefined;
    if (rank !== null) return s.ranks.get(rank) ?? s.pod;
    return s.pod;
  }

  stop(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    for (const ac of this.inflight) ac.abort();
  }
}
