/** The evaluator's text table (the JSON is the EvalResult itself). */
import type { EvalResult } from "./run.ts";
import type { PolicyResult } from "./simulator.ts";

const pct = (x: number) => `${(x * 100).toFixed(1)} %`;
const ms = (x: number) => (Number.isFinite(x) ? `${Math.round(x)} ms` : "-");

export function formatRow(r: PolicyResult): string[] {
  return [
    r.policy,
    String(r.requests - r.rejected),
    pct(r.hitRate),
    ms(r.ttftP50Ms),
    ms(r.ttftP90Ms),
    ms(r.ttftP99Ms),
    r.maxMeanLoad.toFixed(2),
    pct(r.utilization),
  ];
}

export const HEADER = [
  "policy",
  "served",
  "hit rate",
  "TTFT p50",
  "TTFT p90",
  "TTFT p99",
  "max/mean",
  "busy",
];

export function formatTable(r: EvalResult): string {
  const rows = [HEADER, ...Object.values(r.policies).map(formatRow)];
  rows.push(["infinite cache", "", pct(r.infiniteCacheHitRate), "", "", "", "", ""]);
  const widths = HEADER.map((_, i) => Math.max(...rows.map((x) => x[i].length)));
  return rows
    .map((row) => row.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  "))
    .join("\n");
}

/** A Markdown table of the same figures (for docs/routing-quality.md). */
export function markdownTable(r: EvalResult): string {
  const head = `| ${HEADER.join(" | ")} |\n|${HEADER.map((_, i) => (i === 0 ? "---" : "---:")).join("|")}|`;
  const body = Object.values(r.policies).map((p) => `| ${formatRow(p).join(" | ")} |`);
  body.push(`| infinite-cache bound | | ${pct(r.infiniteCacheHitRate)} | | | | | |`);
  return [head, ...body].join("\n");
}

export function describe(r: EvalResult): string {
  const f = r.fleet;
  const w = r.workload;
  return (
    `${w.source}: ${w.requests} requests at ${w.ratePerSecond.toFixed(2)} req/s; ${f.pods} pods x ` +
    `${f.cacheBlocks} blocks of ${f.blockTokens} tokens, event lag ${f.eventLagMs} ms, ` +
    `budget ${f.tokenBudget} tokens, max ${f.maxRunning} running, prefill ${f.prefillMsPerToken} ms/token`
  );
}
