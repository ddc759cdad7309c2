/**
 * A/B of the event decoder between two versions of src/ (what bench:protocol measures: decode of
 * realistic KV-event batches), each side in fresh processes, alternating over rounds as
 * bench:index:ab does (index-ab.ts says why separate processes).
 *
 *   node --import tsx bench/ab/protocol-ab.ts [--base HEAD] [--head worktree] [--rounds 6]
 *        [--runs 3] [--batches 2000] [--ms 150]
 *
 * Printed per dataset: each side's median batches/s, and head / base of the medians of two
 * figures: the raw rate, and ours / msgpackr-raw as measured in the same process (the "norm"
 * ratio: it cancels the machine's speed at that moment, the better figure on a shared machine).
 * The JSON line is also written to bench/results/protocol-ab.json.
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { geomean, materialise, ROOT, spread } from "./sides.ts";

const { values: o } = parseArgs({
  options: {
    base: { type: "string", default: "HEAD" },
    /** names the result file: bench/results/protocol-ab-<label>.json */
    label: { type: "string" },
    head: { type: "string", default: "worktree" },
    rounds: { type: "string", default: "6" },
    runs: { type: "string", default: "3" },
    batches: { type: "string", default: "2000" },
    ms: { type: "string", default: "150" },
  },
});

type Figures = Record<string, { ours: number[]; raw: number[] }>;
const sides = [materialise("protocol", "base", o.base!), materialise("protocol", "head", o.head!)].map(
  (s) => ({ ...s, rates: {} as Record<string, number[]>, norms: {} as Record<string, number[]> }),
);
const child = join(ROOT, "bench", "ab", "protocol-ab-child.ts");
for (let round = 0; round < Number(o.rounds); round++) {
  const order = round % 2 === 0 ? sides : [...sides].reverse();
  for (const s of order) {
    const r = spawnSync(process.execPath, ["--import", "tsx", child, s.dir, o.runs!, o.batches!, o.ms!], {
      cwd: ROOT,
      encoding: "utf8",
      maxBuffer: 1 << 26,
    });
    if (r.status !== 0) throw new Error(`${s.name} (${s.rev}) failed:\n${r.stderr}`);
    const got = JSON.parse(r.stdout.trim().split("\n").pop()!) as Figures;
    const line: string[] = [];
    for (const [ds, f] of Object.entries(got)) {
      s.rates[ds] = [...(s.rates[ds] ?? []), ...f.ours];
      s.norms[ds] = [...(s.norms[ds] ?? []), ...f.ours.map((x, i) => x / f.raw[i]!)];
      line.push(`${ds} ${(spread(f.ours).median / 1000).toFixed(0)}k/s`);
    }
    console.log(`round ${round + 1} ${s.name.padEnd(4)} ${line.join("  ")}`);
  }
}
const [b, h] = sides;
const datasets: Record<string, unknown> = {};
const rateRatios: number[] = [];
const normRatios: number[] = [];
for (const ds of Object.keys(b!.rates)) {
  const rb = spread(b!.rates[ds]!);
  const rh = spread(h!.rates[ds]!);
  const rate = rh.median / rb.median;
  const norm = spread(h!.norms[ds]!).median / spread(b!.norms[ds]!).median;
  rateRatios.push(rate);
  normRatios.push(norm);
  datasets[ds] = {
    base: rb,
    head: rh,
    ratioMedian: +rate.toFixed(3),
    ratioNorm: +norm.toFixed(3),
  };
  console.log(
    `${ds.padEnd(12)} base ${(rb.median / 1000).toFixed(0)}k/s (${(rb.min / 1000).toFixed(0)}-${(rb.max / 1000).toFixed(0)})  ` +
      `head ${(rh.median / 1000).toFixed(0)}k/s (${(rh.min / 1000).toFixed(0)}-${(rh.max / 1000).toFixed(0)})  ` +
      `head/base ${rate.toFixed(3)}, per-process normalised ${norm.toFixed(3)}`,
  );
}
const result = {
  bench: "protocol-ab",
  base: o.base,
  head: o.head,
  rounds: Number(o.rounds),
  runsPerProcess: Number(o.runs),
  batchesPerDataset: Number(o.batches),
  node: process.version,
  ratioGeomean: +geomean(rateRatios).toFixed(3),
  ratioNormGeomean: +geomean(normRatios).toFixed(3),
  datasets,
};
console.log(
  `head / base over the datasets (geometric mean): ${result.ratioGeomean}, normalised ${result.ratioNormGeomean} (throughput: higher is better)`,
);
const line = JSON.stringify(result);
const file = join(ROOT, "bench", "results", `protocol-ab${o.label ? `-${o.label}` : ""}.json`);
mkdirSync(join(ROOT, "bench", "results"), { recursive: true });
writeFileSync(file, `${line}\n`);
console.log(line);
