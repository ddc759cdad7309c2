/**
 * One process of the index A/B runner (index-ab.ts): loads one variant's src tree, generates the
 * seeded fleet workload and prints one JSON line of figures. Not run by hand.
 *
 *   node --expose-gc --import tsx bench/ab/index-ab-child.ts <variant dir> <mode> <runs> <block events>
 *
 * Modes: "apply" (from an empty index, as bench:index), "steady" (only the last third of the
 * batches is timed: the index has stopped growing), "sized" (from an index created with room for
 * the run), "match" (CPU p50 / p99 of 5000 realistic 8k-token matches, per repetition).
 */
import { join } from "node:path";
import { percentileSorted } from "../../src/util/stats.ts";
import { applyChunked, BS, blockEventsOf, buildMatchIndex, MODEL, makeWorkload } from "../fleet-workload.ts";

const [dir, mode, runsArg, eventsArg] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc;
if (!dir || !mode || !gc) {
  console.error("usage: node --expose-gc --import tsx index-ab-child.ts <dir> <mode> <runs> <events>");
  process.exit(2);
}
const ixMod = (await import(join(dir, "src/index/index.ts"))) as typeof import("../../src/index/index.ts");
const protoMod = (await import(
  join(dir, "src/protocol/index.ts")
)) as typeof import("../../src/protocol/index.ts");
const runs = Number(runsArg);
const wl = makeWorkload(Number(eventsArg), 6000);
const decode = protoMod.decodeBatch;
// steady: the last third, from a chunk boundary (applyChunked times whole chunks of 32 batches)
const from = mode === "steady" ? Math.ceil((wl.steps.length * 2) / 3 / 32) * 32 : 0;
const events = blockEventsOf(wl.steps, decode, from);

const figures: number[] = [];
if (mode === "match") {
  const ix = ixMod.createIndex();
  const { convs } = buildMatchIndex(ix, wl.steps, decode, wl.engines);
  const ns = { model: MODEL, lora: null, blockSize: BS };
  const cpu = new Float64Array(5000);
  const time = () => {
    for (let i = 0; i < cpu.length; i++) {
      const c = process.cpuUsage();
      ix.match(ns, convs[i % convs.length]);
      const u = process.cpuUsage(c);
      cpu[i] = u.user + u.system;
    }
    return cpu.sort();
  };
  time();
  for (let k = 0; k < runs; k++) figures.push(percentileSorted(time(), 0.99));
  console.log(JSON.stringify({ p99: figures }));
} else {
  const opts = mode === "sized" ? { initialCapacity: 1_000_000 } : {};
  applyChunked(ixMod.createIndex(opts), wl.steps, decode); // warm-up (JIT)
  for (let k = 0; k < runs; k++) {
    const ix = ixMod.createIndex(opts);
    gc();
    figures.push(events / applyChunked(ix, wl.steps, decode, from).cpu);
  }
  console.log(JSON.stringify({ rate: figures }));
}
