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
import { addMatchPrompts, BS, MODEL, makeWorkload } from "../fleet-workload.ts";

const [dir, mode, runsArg, eventsArg] = process.argv.slice(2);
const gc = (globalThis as { gc?: () => void }).gc;
if (!dir || !mode || !gc) {
  console.error("usage: node --expose-gc --import tsx index-ab-child.ts <dir> <mode> <runs> <events>");
  process.exit(2);
}
type Index = import("../../src/index/index.ts").PrefixIndex;
const ixMod = (await import(join(dir, "src/index/index.ts"))) as typeof import("../../src/index/index.ts");
const protoMod = (await import(
  join(dir, "src/protocol/index.ts")
)) as typeof import("../../src/protocol/index.ts");
const runs = Number(runsArg);
const wl = makeWorkload(Number(eventsArg), 6000);
const from = mode === "steady" ? Math.floor((wl.steps.length * 2) / 3) : 0;

function cpuNow(): number {
  const c = process.cpuUsage();
  return (c.user + c.system) / 1e6;
}
/** apply every batch (decoded 32 at a time, untimed, as the subscriber does); CPU s of steps >= from */
function applyRun(ix: Index): { cpu: number; events: number } {
  let cpu = 0;
  let events = 0;
  const chunk: import("../../src/protocol/index.ts").EventBatch[] = [];
  for (let i = 0; i < wl.steps.length; i += 32) {
    const end = Math.min(i + 32, wl.steps.length);
    chunk.length = 0;
    for (let j = i; j < end; j++) chunk.push(protoMod.decodeBatch(wl.steps[j].payload).batch);
    const c0 = cpuNow();
    for (let j = i; j < end; j++) ix.applyBatch(wl.steps[j].stream, chunk[j - i]);
    if (i >= from) {
      cpu += cpuNow() - c0;
      for (const b of chunk)
        for (const e of b.events) if (e.type !== "AllBlocksCleared") events += e.blockHashes.length;
    }
  }
  return { cpu, events };
}

const figures: number[] = [];
if (mode === "match") {
  const ix = ixMod.createIndex();
  applyRun(ix);
  const { convs } = addMatchPrompts(ix, wl.engines);
  const ns = { model: MODEL, lora: null, blockSize: BS };
  const cpu = new Float64Array(5000);
  const time = () => {
    for (let i = 0; i < cpu.length; i++) {
      const c = process.cpuUsage();
      ix.match(ns, convs[i % convs.length]);
      const u = process.cpuUsage(c);
      cpu[i] = u.user + u.system;
    }
    return Float64Array.from(cpu).sort();
  };
  time();
  const p50: number[] = [];
  for (let k = 0; k < runs; k++) {
    const s = time();
    p50.push(percentileSorted(s, 0.5));
    figures.push(percentileSorted(s, 0.99));
  }
  console.log(JSON.stringify({ p99: figures, p50 }));
} else {
  const opts = mode === "sized" ? { initialCapacity: 1_000_000 } : {};
  applyRun(ixMod.createIndex(opts)); // warm-up (JIT)
  for (let k = 0; k < runs; k++) {
    const ix = ixMod.createIndex(opts);
    gc();
    const r = applyRun(ix);
    figures.push(r.events / r.cpu);
  }
  console.log(JSON.stringify({ rate: figures }));
}
