/**
 * Decode throughput of realistic KV-event batches: our full decode (schema, exact hashes, limits)
 * vs msgpackr's raw `unpack` of the same bytes (no schema, 64-bit ints rounded to doubles), both
 * measured in the same run, interleaved over several rounds; medians reported. Also shown for
 * reference: msgpackr with exact 64-bit ints (BigInt) plus a schema pass — the "exact msgpackr"
 * alternative to a hand-written reader.
 *
 *   npm run bench:protocol            (KVSYNC_BENCH_ROUNDS / KVSYNC_BENCH_BATCHES to change the size)
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Unpackr } from "msgpackr";
import {
  blockRemoved,
  blockStored,
  decodeBatch,
  type EventBatch,
  hashFromBigInt,
  hashFromBytes,
  type KvEvent,
} from "../src/protocol/index.ts";
import { batchesPerSec, type Dataset, makeDatasets } from "./protocol-datasets.ts";

const ROUNDS = Number(process.env.KVSYNC_BENCH_ROUNDS ?? 9);
const BATCHES = Number(process.env.KVSYNC_BENCH_BATCHES ?? 2000);
const MIN_MS = 150; // per measurement

const raw = new Unpackr({ useRecords: false, mapsAsObjects: true });
const exact = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: "bigint" });

let sink = 0;

/** msgpackr with BigInt ints + a minimal schema pass building the same EventBatch. */
function exactMsgpackr(p: Buffer): EventBatch {
  const v = exact.unpack(p) as [number, unknown[], number | null];
  const key = (h: unknown) =>
    typeof h === "bigint"
      ? hashFromBigInt(h)
      : h instanceof Uint8Array
        ? hashFromBytes(h)
        : hashFromBigInt(BigInt(h as number));
  const events = v[1].map((e): KvEvent => {
    const f = (
      Array.isArray(e)
        ? { type: e[0], block_hashes: e[1], parent_block_hash: e[2], token_ids: e[3], block_size: e[4] }
        : e
    ) as Record<string, unknown>;
    if (f.type === "BlockRemoved") {
      return blockRemoved((f.block_hashes as unknown[]).map(key));
    }
    return blockStored(
      (f.block_hashes as unknown[]).map(key),
      f.parent_block_hash == null ? null : key(f.parent_block_hash),
      f.token_ids as number[],
      Number(f.block_size),
    );
  });
  return { ts: v[0], events, dpRank: v[2] ?? null };
}

type Impl = "ours" | "raw" | "exactMsgpackr";
const IMPLS: Record<Impl, (p: Buffer) => void> = {
  ours: (p) => {
    sink += decodeBatch(p).batch.events.length;
  },
  raw: (p) => {
    sink += (raw.unpack(p) as unknown[]).length;
  },
  exactMsgpackr: (p) => {
    sink += exactMsgpackr(p).events.length;
  },
};

/** Batches per second of `impl` over the dataset. */
function measure(impl: Impl, ds: Dataset): number {
  return batchesPerSec(IMPLS[impl], ds, MIN_MS);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

function main(): void {
  const datasets = makeDatasets(BATCHES);
  // sanity: our decode gives back what was encoded (first payload of each)
  for (const ds of datasets)
    if (decodeBatch(ds.payloads[0]!).batch.events.length < 1) throw new Error("bad dataset");
  // warm-up (JIT) of every implementation on every dataset
  for (const ds of datasets) for (const impl of Object.keys(IMPLS) as Impl[]) measure(impl, ds);

  const samples: Record<string, Record<Impl, number[]>> = {};
  const ratios: Record<string, number[]> = {};
  for (const ds of datasets) {
    samples[ds.name] = { ours: [], raw: [], exactMsgpackr: [] };
    ratios[ds.name] = [];
  }
  for (let round = 0; round < ROUNDS; round++) {
    for (const ds of datasets) {
      // alternate the order within each pair so drift on a shared machine hits both sides
      const order: Impl[] = round % 2 ? ["raw", "ours", "exactMsgpackr"] : ["ours", "raw", "exactMsgpackr"];
      const got = {} as Record<Impl, number>;
      for (const impl of order) got[impl] = measure(impl, ds);
      for (const impl of order) samples[ds.name]![impl].push(got[impl]);
      ratios[ds.name]!.push(got.ours / got.raw);
    }
  }

  const rows: Record<string, unknown> = {};
  let allRatios: number[] = [];
  console.log(
    `${"dataset".padEnd(12)} ${"bytes/batch".padStart(11)} ${"ours batch/s".padStart(13)} ${"ours hash/s".padStart(12)} ${"raw batch/s".padStart(12)} ${"ours/raw".padStart(9)} ${"exact-msgpackr b/s".padStart(19)}`,
  );
  for (const ds of datasets) {
    const s = samples[ds.name]!;
    const ours = median(s.ours);
    const rawB = median(s.raw);
    const ex = median(s.exactMsgpackr);
    const ratio = median(ratios[ds.name]!);
    allRatios = allRatios.concat(ratios[ds.name]!);
    const hashesPerBatch = ds.hashes / ds.payloads.length;
    rows[ds.name] = {
      era: ds.era,
      bytesPerBatch: Math.round(ds.bytes / ds.payloads.length),
      hashesPerBatch: Number(hashesPerBatch.toFixed(2)),
      oursBatchesPerSec: Math.round(ours),
      oursHashesPerSec: Math.round(ours * hashesPerBatch),
      rawBatchesPerSec: Math.round(rawB),
      rawHashesPerSec: Math.round(rawB * hashesPerBatch),
      exactMsgpackrBatchesPerSec: Math.round(ex),
      ratio: Number(ratio.toFixed(3)),
    };
    console.log(
      `${ds.name.padEnd(12)} ${String(Math.round(ds.bytes / ds.payloads.length)).padStart(11)} ${Math.round(ours).toLocaleString("en").padStart(13)} ${Math.round(
        ours * hashesPerBatch,
      )
        .toLocaleString("en")
        .padStart(
          12,
        )} ${Math.round(rawB).toLocaleString("en").padStart(12)} ${ratio.toFixed(2).padStart(9)} ${Math.round(ex).toLocaleString("en").padStart(19)}`,
    );
  }
  const minRatio = Math.min(...datasets.map((ds) => (rows[ds.name] as { ratio: number }).ratio));
  const overall = median(allRatios);
  console.log(
    `ours/raw msgpackr: median ${overall.toFixed(2)}, worst dataset ${minRatio.toFixed(2)} (target >= 0.70)`,
  );
  const result = {
    bench: "protocol",
    node: process.version,
    rounds: ROUNDS,
    batchesPerDataset: BATCHES,
    ratioMedian: Number(overall.toFixed(3)),
    ratioWorstDataset: Number(minRatio.toFixed(3)),
    target: 0.7,
    pass: minRatio >= 0.7,
    datasets: rows,
    sink: sink > 0,
  };
  const line = JSON.stringify(result);
  const out = join(dirname(fileURLToPath(import.meta.url)), "results", "protocol.json");
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${line}\n`);
  console.log(line);
}

main();
