/**
 * The soak's subscriber process: kvsync's real stack (SubscriberManager → StreamSubscriber →
 * SyncPrefixIndex, production options) on the engines given in KVSYNC_FUZZ_PODS, in a process of
 * its own so a crash or a leak is its own. It reports every 5 ms over IPC (each stream's last
 * seq and state, for the soak's flow control), samples its memory after a forced GC every
 * second, counts its log lines by `event`, and answers a final `dump` with what its index holds.
 * Run with --expose-gc.
 */
import { Writable } from "node:stream";
import pino from "pino";
import { Registry } from "prom-client";
import type { PodInfo } from "../../src/discovery/types.ts";
import { SubscriberManager } from "../../src/events/manager.ts";
import { SyncPrefixIndex } from "../../src/index/sync-index.ts";
import { hashToText } from "../../src/protocol/hash.ts";
import { BLOCK_SIZE, MODEL, matchText } from "./workload.ts";

export interface MemorySample {
  t: number;
  heapUsed: number;
  rss: number;
  external: number;
}

export type ToSubscriber = { t: "dump"; probes: number[][] } | { t: "stop" };
export type FromSubscriber =
  | { t: "ack"; streams: Array<{ id: string; lastSeq: number | null; state: string }> }
  | {
      t: "dump";
      blocks: Record<string, string[]>;
      matches: string[];
      statuses: unknown[];
      samples: MemorySample[];
      logEvents: Record<string, number>;
      logProblems: string[];
      indexStats: unknown;
    };

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) throw new Error("run with --expose-gc");
const send = (m: FromSubscriber) => process.send?.(m);

// every log line is counted by event; decode errors must name their pod and seq
const logEvents: Record<string, number> = {};
const logProblems: string[] = [];
const sink = new Writable({
  write(chunk: Buffer, _enc, done) {
    for (const line of chunk.toString("utf8").split("\n")) {
      if (line === "") continue;
      const o = JSON.parse(line) as Record<string, unknown>;
      const ev = typeof o.event === "string" ? o.event : "(no event)";
      logEvents[ev] = (logEvents[ev] ?? 0) + 1;
      if (ev === "subscriber.decode_error" && (!("pod" in o) || !("seq" in o)) && logProblems.length < 10)
        logProblems.push(line.slice(0, 300));
    }
    done();
  },
});
const log = pino({ level: "info", base: null }, sink);

const pods = JSON.parse(process.env.KVSYNC_FUZZ_PODS ?? "[]") as Array<{
  name: string;
  events: string;
  replay: string;
}>;
const index = new SyncPrefixIndex({});
const manager = new SubscriberManager({ index, registry: new Registry(), log });
manager.setPods(
  pods.map(
    (p): PodInfo => ({
      name: p.name,
      model: MODEL,
      loras: [],
      http: "http://127.0.0.1:9",
      events: p.events,
      replay: p.replay,
      dataParallelSize: 1,
      ready: true,
      blockSize: BLOCK_SIZE,
    }),
  ),
);

const acks = setInterval(() => {
  send({
    t: "ack",
    streams: manager.statuses().map((s) => ({ id: s.streamId, lastSeq: s.lastSeq, state: s.state })),
  });
}, 5);

const samples: MemorySample[] = [];
function sample(): void {
  gc?.();
  const m = process.memoryUsage();
  samples.push({ t: Date.now(), heapUsed: m.heapUsed, rss: m.rss, external: m.external });
}
const sampler = setInterval(sample, 1000);

process.on("message", (msg: ToSubscriber) => {
  if (msg.t === "stop") {
    clearInterval(acks);
    clearInterval(sampler);
    void manager.close().then(() => process.exit(0));
    return;
  }
  sample();
  const blocks: Record<string, string[]> = {};
  for (const p of pods)
    blocks[p.name] = index
      .streamBlocks(p.name)
      .map((b) => `${hashToText(b.hash)}:${[...b.tiers].sort().join(",")}`)
      .sort();
  const ns = { model: MODEL, lora: null, blockSize: BLOCK_SIZE };
  const matches = msg.probes.map((tokens) => matchText(index.match(ns, tokens)));
  send({
    t: "dump",
    blocks,
    matches,
    statuses: manager.statuses(),
    samples,
    logEvents,
    logProblems,
    indexStats: index.stats(),
  });
});
