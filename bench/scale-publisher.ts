/**
 * The scale benchmark's fleet (bench/scale.bench.ts), one slice of it per child process: pods
 * `SCALE_POD_FROM` .. +`SCALE_PODS`-1 of `SCALE_PODS_TOTAL`, each with the mock engine's own
 * KV-event publisher (a real ZeroMQ PUB socket and replay ROUTER, src/engine/publisher.ts,
 * vLLM's 2026-05 array-era batches) and a light HTTP responder (`/health`, `/v1/completions`).
 * It writes the engines file the gateway discovers its pods by, then publishes block events at
 * its share of the aggregate rate the parent sets over IPC, and reports what it achieved.
 *
 * Each pod's cache: a few tenant system prompts stored once and kept (what requests share),
 * then rolling chains of unique blocks continuing from them, capped at `blocksPerPod`: past the
 * cap every batch removes as many oldest blocks as it stores. A block event is one hash in a
 * BlockStored or BlockRemoved. Like vLLM, a pod publishes all the events of a step in one batch;
 * its steps with events come every `batchMs`, in staggered groups so messages spread over time.
 * Batches are encoded from templates (scale-frames.ts): the same bytes as the real encoder's, at
 * a fraction of its cost, so the publisher measures the gateway rather than itself.
 *
 * IPC: parent → {rate} (aggregate block events/s, 0 = idle) | {seed} | {minBatch} | {stop};
 * child → {ready, enginesFile} and every second {stats}.
 */

import { writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { performance } from "node:perf_hooks";
import { EventPublisher } from "../src/engine/publisher.ts";
import { blockStored } from "../src/protocol/build.ts";
import { hashFromInt } from "../src/protocol/hash.ts";
import type { KvEvent } from "../src/protocol/types.ts";
import { silentLogger } from "../src/util/log.ts";
import { BLOCK_SIZE, TENANT_BLOCKS, tenantsOf, tenantToken } from "./scale-fleet.ts";
import { blockId, FrameEncoder, type StoredRun, tenantN } from "./scale-frames.ts";

const PODS = Number(process.env.SCALE_PODS ?? 1000);
const POD_FROM = Number(process.env.SCALE_POD_FROM ?? 0);
const PODS_TOTAL = Number(process.env.SCALE_PODS_TOTAL ?? PODS);
const BLOCKS_PER_POD = Number(process.env.SCALE_BLOCKS_PER_POD ?? 2000);
const BATCH_MS = Number(process.env.SCALE_BATCH_MS ?? 100);
const TICK_MS = 5;
const CHAIN_BLOCKS = 32;
const MODEL = process.env.SCALE_MODEL ?? "Qwen/Qwen3-0.6B";
const ENGINES_FILE = process.env.SCALE_ENGINES_FILE ?? "";
interface Pod {
  no: number;
  pub: EventPublisher;
  http: Server;
  /** next rolling block n; rolling blocks oldest..next-1 are held */
  next: number;
  oldest: number;
  chainLeft: number;
  /** n of the block the next stored block continues */
  parent: number;
  /** n of each tenant prompt's last block */
  tenantLast: number[];
  /** fractional events owed (rate × time not yet whole) */
  owed: number;
}

const frames = new FrameEncoder();
const runs: StoredRun[] = [];

function tenantEvents(pod: number): { events: KvEvent[]; last: number[] } {
  const events: KvEvent[] = [];
  const last: number[] = [];
  for (const t of tenantsOf(pod)) {
    const hashes = Array.from({ length: TENANT_BLOCKS }, (_, b) => hashFromInt(blockId(pod, tenantN(t, b))));
    const tokens = Array.from({ length: TENANT_BLOCKS * BLOCK_SIZE }, (_, j) => tenantToken(t, j));
    events.push(blockStored(hashes, null, tokens, BLOCK_SIZE, { medium: "GPU" }));
    last.push(tenantN(t, TENANT_BLOCKS - 1));
  }
  return { events, last };
}

/** One step's batch of about `n` block events for pod `p`: stores, and past the cap as many removals. */
function batchOf(p: Pod, n: number): { payload: Buffer; blocks: number } {
  const full = p.next - p.oldest >= BLOCKS_PER_POD;
  const stores = full ? Math.max(1, n - Math.floor(n / 2)) : n;
  runs.length = 0;
  for (let left = stores; left > 0; ) {
    if (p.chainLeft === 0) {
      // a new conversation on one of the pod's tenant prompts
      p.parent = p.tenantLast[p.next % p.tenantLast.length];
      p.chainLeft = CHAIN_BLOCKS;
    }
    const count = Math.min(left, p.chainLeft);
    runs.push({ parent: p.parent, first: p.next, count });
    p.next += count;
    p.chainLeft -= count;
    p.parent = p.next - 1;
    left -= count;
  }
  const removedFirst = p.oldest;
  const removed = Math.max(0, p.next - p.oldest - BLOCKS_PER_POD);
  p.oldest += removed;
  // stamped like vLLM's time.time() at publish
  const payload = frames.encode(Date.now() / 1000, p.no, runs, removedFirst, removed);
  return { payload, blocks: stores + removed };
}

function responder(): Server {
  return createServer((req, res) => {
    if (req.method === "GET" && req.url === "/health") {
      res.writeHead(200, { "content-length": 0 });
      res.end();
      return;
    }
    if (req.method === "POST" && req.url?.startsWith("/v1/completions")) {
      let bytes = 0;
      req.on("data", (d: Buffer) => {
        bytes += d.length;
      });
      req.on("end", () => {
        const body = JSON.stringify({
          id: "cmpl-bench",
          object: "text_completion",
          created: Math.floor(Date.now() / 1000),
          model: MODEL,
          choices: [{ index: 0, text: "ok", finish_reason: "length", logprobs: null }],
          usage: {
            prompt_tokens: Math.round(bytes / 7),
            completion_tokens: 1,
            total_tokens: 1 + Math.round(bytes / 7),
          },
        });
        res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) });
        res.end(body);
      });
      return;
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"error":{"message":"not found","type":"not_found_error"}}');
  });
}

async function main(): Promise<void> {
  const log = silentLogger();
  const pods: Pod[] = [];
  const entries: unknown[] = [];
  for (let i = 0; i < PODS; i++) {
    const pub = new EventPublisher({
      endpoint: "tcp://127.0.0.1:*",
      bind: true,
      replayEndpoint: "tcp://127.0.0.1:*",
      topic: "",
      format: "array",
      bufferSteps: 64,
      dpRank: null,
      dropRate: 0,
      loseRate: 0,
      random: Math.random,
      log,
      maxSendQueue: 1000,
    });
    await pub.start();
    const http = responder();
    await new Promise<void>((r) => http.listen(0, "127.0.0.1", r));
    const port = (http.address() as { port: number }).port;
    pods.push({
      pub,
      http,
      no: POD_FROM + i,
      next: 0,
      oldest: 0,
      chainLeft: 0,
      parent: 0,
      tenantLast: [],
      owed: 0,
    });
    entries.push({
      name: `pod-${POD_FROM + i}`,
      model: MODEL,
      http: `http://127.0.0.1:${port}`,
      events: pub.eventsEndpoint,
      replay: pub.replayEndpoint,
      blockSize: BLOCK_SIZE,
    });
  }
  writeFileSync(ENGINES_FILE, JSON.stringify({ engines: entries }));

  let rate = 0;
  /** a pod publishes once it owes this many events (large while filling: fewer, bigger batches) */
  let minBatch = 1;
  let sentEvents = 0;
  let sentBatches = 0;
  let behindMs = 0;
  let seeded = false;
  const groups = Math.max(1, Math.round(BATCH_MS / TICK_MS));
  let group = 0;
  let nextAt = performance.now();
  const cpu0 = process.cpuUsage();
  const tick = () => {
    const now = performance.now();
    // publish every group whose turn has come (a late timer catches up, at most one round)
    let rounds = 0;
    while (nextAt <= now && rounds < groups) {
      const perPod = (rate / PODS_TOTAL) * (BATCH_MS / 1000);
      for (let i = group; i < PODS; i += groups) {
        const p = pods[i];
        if (!seeded) continue;
        p.owed += perPod;
        const n = Math.floor(p.owed);
        if (n < minBatch) continue;
        const { payload, blocks } = batchOf(p, n);
        p.owed -= blocks;
        p.pub.publishEncoded(payload);
        sentEvents += blocks;
        sentBatches++;
      }
      group = (group + 1) % groups;
      nextAt += TICK_MS;
      rounds++;
    }
    if (now - nextAt > 1000) {
      // more than a second behind: what is owed is not sent (the achieved rate says so)
      behindMs += now - nextAt;
      nextAt = now;
    }
    setTimeout(tick, Math.max(0, nextAt - performance.now()));
  };
  tick();
  let last = { t: performance.now(), events: 0, batches: 0, cpu: process.cpuUsage(cpu0) };
  setInterval(() => {
    const t = performance.now();
    const cpu = process.cpuUsage(cpu0);
    let dropped = 0;
    for (const p of pods) dropped += p.pub.stats.dropped;
    process.send?.({
      stats: {
        t: Date.now(),
        sentEvents,
        sentBatches,
        dropped,
        behindMs: Math.round(behindMs),
        eventsPerSec: Math.round(((sentEvents - last.events) * 1000) / (t - last.t)),
        cpuCores: (cpu.user + cpu.system - last.cpu.user - last.cpu.system) / 1000 / (t - last.t),
        rssBytes: process.memoryUsage.rss(),
        cpuSec: (cpu.user + cpu.system) / 1e6,
        templates: frames.templatesBuilt,
      },
    });
    last = { t, events: sentEvents, batches: sentBatches, cpu };
  }, 1000).unref();

  process.on("message", (m: { rate?: number; minBatch?: number; seed?: boolean; stop?: boolean }) => {
    if (m.seed === true && !seeded) {
      // the tenant prompts, once per pod, before any rolling chain
      for (const p of pods) {
        const { events, last: tl } = tenantEvents(p.no);
        p.tenantLast = tl;
        p.pub.publish(events);
      }
      seeded = true;
    }
    if (typeof m.rate === "number") rate = m.rate;
    if (typeof m.minBatch === "number") minBatch = Math.max(1, m.minBatch);
    if (m.stop === true) {
      void Promise.all(
        pods.map(async (p) => {
          await p.pub.close();
          p.http.close();
        }),
      ).then(() => process.exit(0));
    }
  });
  process.send?.({ ready: true, enginesFile: ENGINES_FILE, pods: PODS });
}

void main().catch((err) => {
  process.stderr.write(`scale publisher failed: ${String(err?.stack ?? err)}\n`);
  process.exit(1);
});
