/** Per-policy results of a demo run and the comparison table. */
import { percentile } from "../util/stats.ts";

export interface RequestOutcome {
  ok: boolean;
  /** HTTP status, or 0 when no response arrived */
  status: number;
  /** x-kvsync-pod of the response (null when the gateway did not answer with one) */
  pod: string | null;
  /** client-side: request sent → first content chunk */
  ttftMs: number | null;
  /** client-side: request sent → stream end */
  latencyMs: number;
  promptTokens: number;
  cachedTokens: number;
  /** the assistant's reply text (goes into the next turn's history) */
  content: string;
  error?: string;
}

export interface PolicyResult {
  policy: string;
  /** requests answered successfully */
  requests: number;
  /** requests that failed (non-200, stream error, timeout) or were skipped after a failed turn */
  errors: number;
  promptTokens: number;
  cachedTokens: number;
  /** cachedTokens / promptTokens (engine-reported usage) */
  hitRate: number;
  ttftP50Ms: number;
  ttftP90Ms: number;
  ttftMeanMs: number;
  latencyP50Ms: number;
  durationS: number;
  requestsPerSecond: number;
  /** successful requests per pod (x-kvsync-pod), every pod listed */
  perPod: Record<string, number>;
}

export function summarize(
  policy: string,
  pods: readonly string[],
  outcomes: readonly RequestOutcome[],
  skipped: number,
  durationS: number,
): PolicyResult {
  const ok = outcomes.filter((o) => o.ok);
  const perPod: Record<string, number> = {};
  for (const p of pods) perPod[p] = 0;
  let promptTokens = 0;
  let cachedTokens = 0;
  const ttfts: number[] = [];
  const lat: number[] = [];
  for (const o of ok) {
    if (o.pod !== null) perPod[o.pod] = (perPod[o.pod] ?? 0) + 1;
    promptTokens += o.promptTokens;
    cachedTokens += o.cachedTokens;
    if (o.ttftMs !== null) ttfts.push(o.ttftMs);
    lat.push(o.latencyMs);
  }
  const round1 = (x: number) => Math.round(x * 10) / 10;
  return {
    policy,
    requests: ok.length,
    errors: outcomes.length - ok.length + skipped,
    promptTokens,
    cachedTokens,
    hitRate: promptTokens > 0 ? cachedTokens / promptTokens : 0,
    ttftP50Ms: round1(percentile(ttfts, 0.5)),
    ttftP90Ms: round1(percentile(ttfts, 0.9)),
    ttftMeanMs: round1(ttfts.length ? ttfts.reduce((a, b) => a + b, 0) / ttfts.length : Number.NaN),
    latencyP50Ms: round1(percentile(lat, 0.5)),
    durationS: Math.round(durationS * 100) / 100,
    requestsPerSecond: durationS > 0 ? Math.round((ok.length / durationS) * 10) / 10 : 0,
    perPod,
  };
}

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : "-");

/** The comparison table (plain text, one row per policy) plus a one-line verdict. */
export function formatTable(results: readonly PolicyResult[]): string {
  const header = [
    "policy",
    "requests",
    "errors",
    "prefix hit rate",
    "TTFT p50",
    "TTFT p90",
    "req/s",
    "requests per pod",
  ];
  const rows = results.map((r) => [
    r.policy,
    String(r.requests),
    String(r.errors),
    pct(r.hitRate),
    ms(r.ttftP50Ms),
    ms(r.ttftP90Ms),
    r.requestsPerSecond.toFixed(1),
    Object.entries(r.perPod)
      .map(([p, n]) => `${p}:${n}`)
      .join(" "),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const leftAligned = new Set([0, header.length - 1]);
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (leftAligned.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ")
      .trimEnd();
  const out = [line(header), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)];
  const kv = results.find((r) => r.policy === "kv-aware");
  const rr = results.find((r) => r.policy === "round-robin");
  if (kv && rr && rr.ttftP50Ms > 0 && kv.ttftP50Ms > 0) {
    out.push(
      "",
      `kv-aware vs round-robin: prefix hit rate ${pct(kv.hitRate)} vs ${pct(rr.hitRate)}, ` +
        `TTFT p50 ${(rr.ttftP50Ms / kv.ttftP50Ms).toFixed(2)}x lower, p90 ${(rr.ttftP90Ms / kv.ttftP90Ms).toFixed(2)}x lower`,
    );
  }
  return out.join("\n");
}
