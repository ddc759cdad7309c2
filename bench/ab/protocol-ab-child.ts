/**
 * One process of the protocol A/B runner (protocol-ab.ts): loads one side's decoder, decodes the
 * bench's seeded datasets (encoded by this tree, so both sides read the same bytes) and prints
 * one JSON line: per dataset, batches per CPU second of the side's decodeBatch and of msgpackr's raw unpack
 * measured alternately in this process (the raw rate is the machine's speed at that moment:
 * ours / raw cancels a busy neighbour out). Not run by hand.
 *
 *   node --import tsx bench/ab/protocol-ab-child.ts <side dir> <runs> <batches> <ms per measurement>
 */
import { join } from "node:path";
import { Unpackr } from "msgpackr";
import { batchesPerSec, makeDatasets } from "../protocol-datasets.ts";

const [dir, runsArg, batchesArg, msArg] = process.argv.slice(2);
if (!dir || !runsArg || !batchesArg || !msArg) {
  console.error("usage: node --import tsx protocol-ab-child.ts <dir> <runs> <batches> <ms>");
  process.exit(2);
}
const proto = (await import(
  join(dir, "src/protocol/index.ts")
)) as typeof import("../../src/protocol/index.ts");
const raw = new Unpackr({ useRecords: false, mapsAsObjects: true });
let sink = 0;
const ours = (p: Buffer) => {
  sink += proto.decodeBatch(p).batch.events.length;
};
const unpack = (p: Buffer) => {
  sink += (raw.unpack(p) as unknown[]).length;
};
const datasets = makeDatasets(Number(batchesArg));
const ms = Number(msArg);
for (const ds of datasets) {
  for (let w = 0; w < 3; w++) batchesPerSec(ours, ds, ms, "cpu"); // warm-up (JIT: tiers up over several passes)
  batchesPerSec(unpack, ds, ms, "cpu");
}
const out: Record<string, { ours: number[]; raw: number[] }> = {};
for (const ds of datasets) out[ds.name] = { ours: [], raw: [] };
for (let k = 0; k < Number(runsArg); k++) {
  for (const ds of datasets) {
    const first = k % 2 === 0;
    const a = first ? batchesPerSec(ours, ds, ms, "cpu") : 0;
    const r = batchesPerSec(unpack, ds, ms, "cpu");
    const b = first ? a : batchesPerSec(ours, ds, ms, "cpu");
    out[ds.name]!.ours.push(b);
    out[ds.name]!.raw.push(r);
  }
}
if (sink === 0) throw new Error("nothing decoded");
console.log(JSON.stringify(out));
