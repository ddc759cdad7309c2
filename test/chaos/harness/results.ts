import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { REPO_ROOT } from "../../e2e/harness/cluster.ts";

/**
 * Results of the experiments. Each test file (a process of its own under Node's runner) writes
 * its rows to a run folder shared by the files of one `node --test` run (keyed by the runner's
 * pid, or KVSYNC_CHAOS_RUN), prints them, and the last file (`zz-summary.test.ts`) prints the
 * whole run. With KVSYNC_CHAOS_RECORD=1 every row is also merged into bench/results/chaos.json;
 * without it nothing in the repository changes.
 */

export interface ExperimentResult {
  id: string;
  group: string;
  title: string;
  /**
   * fault start → the first expected log event or metric change the harness saw (ms), null
   * when none; polled every 100 ms (log) and 500 ms (metrics)
   */
  detectMs: number | null;
  /** which event or metric detected the fault first */
  detectedBy?: string | null;
  /** why the fault has no kvsync signal (the spec's measured reason) */
  undetected?: string;
  /** fault end → index == engine truth (ms), null when not within the bound */
  indexRecoveryMs: number | null;
  /** fault end → throughput and hit rate back at >= 90 % of baseline (ms) */
  perfRecoveryMs: number | null;
  baseline: { throughput: number; hitRate: number };
  duringFault: { throughput: number; hitRate: number };
  requests: number;
  /** non-200 answers and client-side failures from fault start to recovery */
  failed: number;
  /** the longest request from fault start to recovery (ms) */
  slowestMs: number;
  /** first strict comparison after the load stopped */
  stale: number;
  missing: number;
  /** post-recovery requests whose engine cached_tokens != the gateway's prediction */
  predictionMismatches: number;
  targetMs: number;
  boundMs: number;
  targetMet: boolean;
  passed: boolean;
  failures: string[];
  holdMs: number;
  /** warnings and errors in the gateway's log from the fault's start to recovery: event → lines */
  eventsSeen: Record<string, number>;
  /** the injector's proof that the fault took effect */
  evidence: unknown;
  at: string;
}

const RESULTS_ROOT = "/tmp/kvsync-chaos";

export function runDir(): string {
  const id = process.env.KVSYNC_CHAOS_RUN ?? `run-${process.ppid}`;
  const dir = join(RESULTS_ROOT, id);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** The row, and the requests judged (fault start to recovery) beside it for a post-mortem. */
export function saveResult(r: ExperimentResult, requests: unknown[]): void {
  writeFileSync(join(runDir(), `${r.id}.json`), `${JSON.stringify(r, null, 2)}\n`);
  writeFileSync(join(runDir(), `${r.id}.requests.jsonl`), requests.map((x) => JSON.stringify(x)).join("\n"));
  if (process.env.KVSYNC_CHAOS_RECORD === "1") record(r);
}

export function loadRun(): ExperimentResult[] {
  const dir = runDir();
  return readdirSync(dir)
    .filter((f) => f.endsWith(".json"))
    .map((f) => JSON.parse(readFileSync(join(dir, f), "utf8")) as ExperimentResult)
    .sort((a, b) => a.at.localeCompare(b.at));
}

const RECORD_FILE = join(REPO_ROOT, "bench/results/chaos.json");

function record(r: ExperimentResult): void {
  let doc: { note: string; experiments: ExperimentResult[] } = { note: "", experiments: [] };
  try {
    doc = JSON.parse(readFileSync(RECORD_FILE, "utf8"));
  } catch {
    // first record
  }
  doc.note =
    "written by `KVSYNC_CHAOS_RECORD=1 npm run test:chaos` (docs/chaos.md); times in ms; null = not reached";
  doc.experiments = doc.experiments.filter((e) => e.id !== r.id).concat(r);
  mkdirSync(join(REPO_ROOT, "bench/results"), { recursive: true });
  writeFileSync(RECORD_FILE, `${JSON.stringify(doc, null, 2)}\n`);
}

const ms = (v: number | null) => (v === null ? "—" : `${(v / 1000).toFixed(1)}s`);

export function formatTable(rows: ExperimentResult[]): string {
  const head = [
    "experiment",
    "detect",
    "index==truth",
    "perf>=90%",
    "failed/reqs",
    "stale/missing",
    "pred.miss",
    "target",
    "met",
    "pass",
  ];
  const body = rows.map((r) => [
    r.id,
    ms(r.detectMs),
    ms(r.indexRecoveryMs),
    ms(r.perfRecoveryMs),
    `${r.failed}/${r.requests}`,
    `${r.stale}/${r.missing}`,
    String(r.predictionMismatches),
    `${r.targetMs / 1000}s`,
    r.targetMet ? "yes" : "no",
    r.passed ? "ok" : "FAIL",
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  return [line(head), `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`, ...body.map(line)].join("\n");
}

export function printTable(title: string, rows: ExperimentResult[]): void {
  if (rows.length === 0) return;
  process.stdout.write(`\n${title}\n${formatTable(rows)}\n`);
  for (const r of rows)
    for (const f of r.failures) process.stdout.write(`  ${r.id}: ${f.replace(/\n/g, " ").slice(0, 400)}\n`);
}
