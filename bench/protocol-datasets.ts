/**
 * The protocol benches' datasets (bench:protocol and its A/B, bench/ab/protocol-ab.ts): realistic
 * KV-event batches, seeded, encoded in both wire eras with uint64 or 32-byte hashes.
 */
import {
  type BlockStored,
  blockRemoved,
  blockStored,
  type EventBatch,
  encodeBatch,
  hashFromBytes,
  hashFromUint64Parts,
  type KvEvent,
  type WireEra,
} from "../src/protocol/index.ts";
import { seededRandom } from "../src/util/rng.ts";

export interface Dataset {
  name: string;
  era: WireEra;
  payloads: Buffer[];
  hashes: number;
  bytes: number;
}

function makeDataset(
  name: string,
  era: WireEra,
  bytesHashes: boolean,
  seed: number,
  batches: number,
): Dataset {
  const r = seededRandom(seed);
  const hash = () => {
    if (bytesHashes) {
      const b = Buffer.allocUnsafe(32);
      for (let i = 0; i < 32; i++) b[i] = (r() * 256) | 0;
      return hashFromBytes(b);
    }
    // sha256-derived uint64: uniformly distributed, so mostly >= 2^63 half the time
    return hashFromUint64Parts(Math.floor(r() * 2 ** 32), Math.floor(r() * 2 ** 32));
  };
  const payloads: Buffer[] = [];
  let hashes = 0;
  let bytes = 0;
  for (let i = 0; i < batches; i++) {
    const events: KvEvent[] = [];
    const blocks = 1 + Math.floor(r() * 32);
    const tokenIds: number[] = [];
    for (let t = 0; t < blocks * 16; t++) tokenIds.push(Math.floor(r() * 151_000));
    const ev: BlockStored = blockStored(
      Array.from({ length: blocks }, hash),
      r() < 0.3 ? null : hash(),
      tokenIds,
      16,
      { medium: "GPU" },
    );
    events.push(ev);
    hashes += blocks;
    if (r() < 0.2) {
      const n = 1 + Math.floor(r() * 8);
      events.push(blockRemoved(Array.from({ length: n }, hash), { medium: "GPU" }));
      hashes += n;
    }
    const batch: EventBatch = { ts: 1.7e9 + i * 0.01, events, dpRank: 0 };
    const p = encodeBatch(batch, era);
    payloads.push(p);
    bytes += p.length;
  }
  return { name, era, payloads, hashes, bytes };
}

/** the four datasets, `batches` batches each */
export function makeDatasets(batches: number): Dataset[] {
  return [
    makeDataset("array-ints", "2025-09", false, 1, batches),
    makeDataset("array-bytes", "2025-09", true, 2, batches),
    makeDataset("map-ints", "2026-07", false, 3, batches),
    makeDataset("map-bytes", "2026-07", true, 4, batches),
  ];
}

/** milliseconds on a clock: the wall's, or this process's CPU time (immune to being descheduled) */
const clocks = {
  wall: () => Number(process.hrtime.bigint()) / 1e6,
  cpu: () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  },
};

/** Batches per second of `fn` over the dataset: whole passes until `minMs` have elapsed on `clock`. */
export function batchesPerSec(
  fn: (p: Buffer) => void,
  ds: Dataset,
  minMs: number,
  clock: keyof typeof clocks = "wall",
): number {
  const now = clocks[clock];
  const ps = ds.payloads;
  let n = 0;
  const t0 = now();
  let elapsed = 0;
  do {
    for (let i = 0; i < ps.length; i++) fn(ps[i]!);
    n += ps.length;
    elapsed = now() - t0;
  } while (elapsed < minMs);
  return (n / elapsed) * 1000;
}
