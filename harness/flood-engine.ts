/**
 * A vLLM-like KV-event publisher in its own process, for the flood tests and bench/flood.bench.ts:
 * a PUB sending `[topic, seq, payload]` in vLLM's map era and a ROUTER answering replays from a
 * ring of the last `bufferBatches` batches (vLLM's `buffer_steps`), with vLLM's drop behaviour:
 * what the PUB's high-water mark drops still enters the ring, so the subscriber sees a gap that
 * a replay fills.
 *
 * The engine's cache holds `cacheBlocks` blocks in L = cacheBlocks / eventsPerBatch sets of
 * `eventsPerBatch` blocks; batch j stores set `j mod 2L` after removing the set stored L batches
 * before, so after N batches the cache is exactly the sets of batches N-L .. N-1 (`truthOf`), the
 * truth a subscriber's index must end up with. The 3L distinct payloads are encoded once and only
 * their timestamp is stamped per send: a flood then costs the publisher a copy and a send per
 * batch, far less than decoding and applying one, as with an engine whose events outrun a
 * router. `flood` sends as fast as the process can (yielding a turn every 64 batches so it still
 * serves replays and reads stdin); `steady` sends `rate` batches a second.
 *
 * Run: node --import tsx flood-engine.ts '<json FloodEngineConfig>'. Stdout, JSON lines:
 * `{"event":"ready","pub":...,"replay":...}`, and after "stop" on stdin (or `maxBatches`)
 * `{"event":"done","lastSeq":n,"batches":n}`; it keeps serving replays until stdin closes.
 */
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import * as zmq from "zeromq";
import { blockStored } from "../src/protocol/build.ts";
import { encodeBatch } from "../src/protocol/encode.ts";
import { encodePubMessage } from "../src/protocol/frames.ts";
import { hashFromInt } from "../src/protocol/hash.ts";
import { decodeReplayRequest, encodeReplayEnd, encodeReplayResponse } from "../src/protocol/replay.ts";
import type { HashKey, KvEvent } from "../src/protocol/types.ts";

export interface FloodEngineConfig {
  mode: "flood" | "steady";
  /** batches a second (steady) */
  rate?: number;
  eventsPerBatch: number;
  cacheBlocks: number;
  bufferBatches: number;
  /** stop after this many batches even without "stop" */
  maxBatches: number;
  hashBase: number;
  /** the PUB's send high-water mark (vLLM: 100,000) */
  sndHwm: number;
  blockSize?: number;
  topic?: string;
}

/** The block ids the engine's cache holds after `batches` batches (see the top of the file). */
export function truthOf(c: FloodEngineConfig, batches: number): number[] {
  const L = Math.max(1, Math.floor(c.cacheBlocks / c.eventsPerBatch));
  const out: number[] = [];
  for (let j = Math.max(0, batches - L); j < batches; j++) {
    const set = j % (2 * L);
    for (let e = 0; e < c.eventsPerBatch; e++) out.push(c.hashBase + set * c.eventsPerBatch + e);
  }
  return out;
}

function stored(c: FloodEngineConfig, set: number): KvEvent[] {
  const BS = c.blockSize ?? 16;
  const events: KvEvent[] = [];
  for (let e = 0; e < c.eventsPerBatch; e++) {
    const h = c.hashBase + set * c.eventsPerBatch + e;
    const tokenIds = new Array<number>(BS);
    for (let t = 0; t < BS; t++) tokenIds[t] = (h * 31 + t) % 151_000;
    events.push(blockStored([hashFromInt(h)], null, tokenIds, BS, { medium: "GPU" }));
  }
  return events;
}

function removed(c: FloodEngineConfig, set: number): KvEvent {
  const hashes: HashKey[] = [];
  for (let e = 0; e < c.eventsPerBatch; e++)
    hashes.push(hashFromInt(c.hashBase + set * c.eventsPerBatch + e));
  return { type: "BlockRemoved", blockHashes: hashes, medium: "GPU", groupIdx: null, locality: null };
}

/** The first L payloads (stores only) and the 2L of the steady state (a removal, then stores). */
function templates(c: FloodEngineConfig): { first: Buffer[]; steady: Buffer[] } {
  const L = Math.max(1, Math.floor(c.cacheBlocks / c.eventsPerBatch));
  // a float timestamp so the encoder writes a float64 right after the array header (stamped per send)
  const enc = (events: KvEvent[]) => encodeBatch({ ts: 0.5, events, dpRank: null }, "2026-07");
  const first: Buffer[] = [];
  for (let j = 0; j < L; j++) first.push(enc(stored(c, j)));
  const steady: Buffer[] = [];
  for (let i = 0; i < 2 * L; i++) steady.push(enc([removed(c, (i + L) % (2 * L)), ...stored(c, i)]));
  return { first, steady };
}

let cfg = {} as FloodEngineConfig;
export const FLOOD_ENGINE = fileURLToPath(import.meta.url);
const topic = cfg.topic ?? "kv";
const ring = new Map<number, Buffer>();
let seq = -1;
let stopping = false;
let stopped = false;
let pool: { first: Buffer[]; steady: Buffer[] } = { first: [], steady: [] };

const out = (o: Record<string, unknown>) => process.stdout.write(`${JSON.stringify(o)}\n`);

async function sendOne(pub: zmq.Publisher): Promise<void> {
  seq++;
  const L = pool.first.length;
  const template = seq < L ? pool.first[seq] : pool.steady[seq % (2 * L)];
  const payload = Buffer.from(template);
  if (payload[1] !== 0xcb) throw new Error("template without a float64 timestamp at byte 1");
  payload.writeDoubleBE(Date.now() / 1000, 2);
  ring.set(seq, payload);
  ring.delete(seq - cfg.bufferBatches);
  // a PUB never blocks: over its high-water mark the message is dropped (it stays in the ring)
  await pub.send(encodePubMessage(topic, seq, payload));
}

async function serveReplays(router: zmq.Router): Promise<void> {
  try {
    for await (const [id, ...frames] of router) {
      let from: number;
      try {
        from = decodeReplayRequest(frames);
      } catch {
        continue;
      }
      for (let s = Math.max(from, seq - cfg.bufferBatches + 1); s <= seq; s++) {
        const p = ring.get(s);
        if (p !== undefined) await router.send([id, ...encodeReplayResponse(s, p, null)]);
      }
      await router.send([id, ...encodeReplayEnd(false)]);
    }
  } catch {
    // closed
  }
}

const turn = () => new Promise<void>((resolve) => setImmediate(resolve));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function main(): Promise<void> {
  cfg = JSON.parse(process.argv[2] ?? "{}") as FloodEngineConfig;
  pool = templates(cfg);
  const pub = new zmq.Publisher({ linger: 0, sendHighWaterMark: cfg.sndHwm });
  await pub.bind("tcp://127.0.0.1:*");
  const router = new zmq.Router({ linger: 0, sendHighWaterMark: 100_000 });
  await router.bind("tcp://127.0.0.1:*");
  const serving = serveReplays(router);
  const rl = createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (line.trim() === "stop") stopping = true;
  });
  rl.on("close", () => {
    stopping = true;
    stopped = true;
    pub.close();
    router.close();
  });
  out({ event: "ready", pub: pub.lastEndpoint, replay: router.lastEndpoint });
  const start = performance.now();
  while (!stopping && seq + 1 < cfg.maxBatches) {
    if (cfg.mode === "flood") {
      for (let i = 0; i < 64 && seq + 1 < cfg.maxBatches; i++) await sendOne(pub);
      await turn();
    } else {
      const due = Math.floor(((performance.now() - start) / 1000) * (cfg.rate ?? 10));
      while (seq + 1 < due && seq + 1 < cfg.maxBatches) await sendOne(pub);
      await sleep(Math.max(1, Math.floor(1000 / (cfg.rate ?? 10) / 2)));
    }
  }
  if (!stopped) out({ event: "done", lastSeq: seq, batches: seq + 1 });
  await serving;
}

// imported (for truthOf) it only defines; run as a script it publishes
if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href)
  main().catch((err) => {
    process.stderr.write(`flood-engine: ${err instanceof Error ? err.stack : String(err)}\n`);
    process.exit(1);
  });
