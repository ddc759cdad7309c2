/**
 * Regenerates bench/results/routing-quality.json, docs/routing-quality/*.svg and the tables of
 * docs/routing-quality.md (printed as Markdown): both Mooncake traces and both generators at 4, 8
 * and 16 pods x 2000 blocks, every policy, at each workload's own arrival rate.
 *
 *   node --import tsx bench/routing-quality.ts <conversation.jsonl> <synthetic.jsonl>
 */
import { writeFileSync } from "node:fs";
import { writeCharts } from "../src/eval/charts.ts";
import { evaluateParallel } from "../src/eval/parallel.ts";
import { describe, markdownTable } from "../src/eval/report.ts";
import { type EvalResult, sweep, type WorkloadSpec } from "../src/eval/run.ts";
import { EVAL_POLICIES, FLEET_DEFAULTS } from "../src/eval/simulator.ts";

const [conversation, synthetic] = process.argv.slice(2);
if (conversation === undefined || synthetic === undefined) {
  process.stderr.write("usage: bench/routing-quality.ts <conversation.jsonl> <synthetic.jsonl>\n");
  process.exit(2);
}
const workloads: Array<[string, WorkloadSpec]> = [
  ["conversation", { kind: "trace", trace: conversation, seed: 1 }],
  ["synthetic", { kind: "trace", trace: synthetic, seed: 1 }],
  ["shared-prefix", { kind: "shared-prefix", requests: 4000, seed: 1 }],
  ["multi-turn", { kind: "multi-turn", requests: 4000, seed: 1 }],
];
const out: Record<string, Record<string, EvalResult>> = {};
for (const [name, w] of workloads) {
  out[name] = {};
  for (const pods of [4, 8, 16]) {
    const fleet = { ...FLEET_DEFAULTS, pods };
    const r = await evaluateParallel(w, fleet, EVAL_POLICIES);
    out[name][`${pods}`] = r;
    process.stdout.write(`\n#### ${name}, ${pods} pods\n\n${describe(r)}\n\n${markdownTable(r)}\n`);
    if (pods === 8) {
      const pts = sweep(w, fleet, EVAL_POLICIES, [0.5, 1, 1.5]);
      await writeCharts("docs/routing-quality", r, pts, `${name}-`);
    }
  }
}
writeFileSync("bench/results/routing-quality.json", `${JSON.stringify(out, null, 1)}\n`);
