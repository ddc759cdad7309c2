/**
 * A/B of the index between two versions of src/, each run in fresh processes (a tool, not a
 * benchmark: `npm run bench:index` gives the figures).
 *
 *   node --import tsx bench/ab/index-ab.ts [--base HEAD] [--head worktree] [--mode apply]
 *        [--rounds 4] [--runs 3] [--events 1500000]
 *
 * --base / --head: a git revision, or "worktree" (the src/ of the working tree, copied when the
 * run starts). Each round starts one process per side, the order alternating between rounds;
 * each process prints its own runs (see index-ab-child.ts for the modes). Printed: per side
 * min / median / max over all runs, and head / base of the medians and of the best runs.
 *
 * Why separate processes: two versions run in one process disturb each other. An A/A/A run of
 * identical code in one process (alternating order) gave the middle slot 20% less throughput
 * than the others, every round: shared JIT, allocator and GC state, and the cache and branch
 * history one version leaves the next. Compare several rounds, and an A/A run when in doubt:
 * on a shared 2-core machine a single pair of runs moves by up to 35%.
 */
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { materialise, ROOT as root, spread, WORK } from "./sides.ts";

const { values: o } = parseArgs({
  options: {
    base: { type: "string", default: "HEAD" },
    head: { type: "string", default: "worktree" },
    mode: { type: "string", default: "apply" },
    rounds: { type: "string", default: "4" },
    runs: { type: "string", default: "3" },
    events: { type: "string", default: "1500000" },
  },
});
const modes = ["apply", "steady", "sized", "match"];
if (!modes.includes(o.mode!)) throw new Error(`--mode: one of ${modes.join(", ")}`);

const sides = [
  { ...materialise("index", "base", o.base!), figures: [] as number[] },
  { ...materialise("index", "head", o.head!), figures: [] as number[] },
];
const key = o.mode === "match" ? "p99" : "rate";
const child = join(root, "bench", "ab", "index-ab-child.ts");
for (let round = 0; round < Number(o.rounds); round++) {
  const order = round % 2 === 0 ? sides : [...sides].reverse();
  for (const s of order) {
    const r = spawnSync(
      process.execPath,
      ["--expose-gc", "--import", "tsx", child, s.dir, o.mode!, o.runs!, o.events!],
      { cwd: root, encoding: "utf8", maxBuffer: 1 << 26 },
    );
    if (r.status !== 0) throw new Error(`${s.name} (${s.rev}) failed:\n${r.stderr}`);
    const got = JSON.parse(r.stdout.trim().split("\n").pop()!) as Record<string, number[]>;
    s.figures.push(...got[key]);
    console.log(`round ${round + 1} ${s.name.padEnd(4)} ${got[key].map((x) => fmt(x)).join(" ")}`);
  }
}
function fmt(x: number): string {
  return o.mode === "match" ? `${x.toFixed(0)}µs` : `${(x / 1e6).toFixed(3)}M/s`;
}
const [b, h] = sides.map((s) => {
  const st = spread(s.figures);
  console.log(
    `${s.name} (${s.rev}): min ${fmt(st.min)}  median ${fmt(st.median)}  max ${fmt(st.max)}  (${s.figures.length} runs)`,
  );
  return st;
});
// for latency the best run is the lowest; for throughput the highest
const best = o.mode === "match" ? h.min / b.min : h.max / b.max;
console.log(
  `head / base: median ${(h.median / b.median).toFixed(3)}, best ${best.toFixed(3)} (${o.mode === "match" ? "p99 µs: lower is better" : "throughput: higher is better"})`,
);
const result = {
  bench: "index-ab",
  mode: o.mode,
  base: { rev: o.base, ...b },
  head: { rev: o.head, ...h },
  ratioMedian: +(h.median / b.median).toFixed(3),
  ratioBest: +best.toFixed(3),
};
writeFileSync(join(WORK, "index", "result.json"), `${JSON.stringify(result)}\n`);
console.log(JSON.stringify(result));
