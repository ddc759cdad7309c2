/**
 * Bad-input soak (not a test, not in CI): `npm run fuzz [-- --frames N --seed S --skip k1,k2]`.
 *
 * This process is the engine side: two pods (array events with the 3-frame replay layout, map
 * events with the 4-frame one), each a PUB and a replay ROUTER on real TCP sockets
 * (bench/fuzz/engine.ts), sending seeded valid batches (bench/fuzz/workload.ts) interleaved
 * with malformed material (bench/fuzz/mutate.ts) until N mutated messages went out. kvsync's
 * subscriber stack runs in a child process (bench/fuzz/subscriber.ts). Every malformed message
 * is one a correct subscriber can tell from the real stream (docs/fuzz.md), so the oracle is
 * exact: the child's index must equal a reference index fed only the valid batches.
 *
 * Checks: the child alive to the end (0 crashes), its heap after GC flat (< 10 % growth from the
 * second quarter's median to the end), the index equal to the reference (blocks, tiers, and the
 * match of every template and recent prompt). Prints a summary, then one JSON line
 * `{"bench":"fuzz",...}`, also written to bench/results/fuzz.json. Exit code 1 when a check fails.
 */
import { type ChildProcess, fork } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { ReferenceIndex } from "../src/index/reference.ts";
import type { StreamRef } from "../src/index/types.ts";
import { encodeBatch } from "../src/protocol/encode.ts";
import { encodeSeq } from "../src/protocol/frames.ts";
import { hashToText } from "../src/protocol/hash.ts";
import { seededRandom } from "../src/util/rng.ts";
import { FuzzEngine } from "./fuzz/engine.ts";
import { Mutator, type PayloadKind } from "./fuzz/mutate.ts";
import type { FromSubscriber, MemorySample, ToSubscriber } from "./fuzz/subscriber.ts";
import { BLOCK_SIZE, EngineWorkload, MODEL, matchText } from "./fuzz/workload.ts";

const HERE = dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    frames: { type: "string", default: process.env.KVSYNC_FUZZ_FRAMES ?? "1000000" },
    seed: { type: "string", default: process.env.KVSYNC_FUZZ_SEED ?? "1" },
    skip: { type: "string", default: process.env.KVSYNC_FUZZ_SKIP ?? "" },
    out: { type: "string", default: process.env.KVSYNC_FUZZ_OUT ?? join(HERE, "results", "fuzz.json") },
  },
});
const FRAMES = Number(args.frames);
const SEED = Number(args.seed);
if (!Number.isSafeInteger(FRAMES) || FRAMES < 1)
  throw new Error(`--frames: not a positive integer: ${args.frames}`);
if (!Number.isSafeInteger(SEED)) throw new Error(`--seed: not an integer: ${args.seed}`);

/** Live-stream faults, as expected messages per valid batch. */
const LIVE_RATES: Record<string, number> = {
  // framing: rejected before any seq logic
  "frame-count": 1.5,
  "seq-length": 1.2,
  "seq-huge": 1.0,
  // seq logic: an applied seq carrying garbage, or an exact copy of an old batch
  "stale-recent": 0.01,
  "stale-old": 0.005,
  "stale-dup": 0.003,
  // a seq no engine will reach for years
  future: 0.0005,
};
/**
 * Instead of the valid message of a batch (probabilities per batch). Kinds that make a correct
 * subscriber ask for a replay are rare: it rate-limits its replays (10/s per stream).
 */
const HEAD_RATES = { "head-payload": 0.005, "odd-topic": 0.05, withheld: 0.003 };
// per replayed message; an answer holds the ~100 batches the subscriber lags by, and each rejected
// payload costs a replay of its own (the subscriber re-fetches it), so payload faults are rarest
const REPLAY_FAULTS = { frames: 0.02, payload: 0.002, dup: 0.02 };
const KINDS = [
  ...Object.keys(LIVE_RATES),
  ...Object.keys(HEAD_RATES),
  "replay-frames",
  "replay-payload",
  "replay-dup",
];
const skip = new Set(args.skip.split(",").filter((s) => s !== ""));
for (const k of skip)
  if (!KINDS.includes(k)) throw new Error(`--skip: unknown kind ${k} (kinds: ${KINDS.join(", ")})`);
for (const k of skip) {
  if (k in LIVE_RATES) LIVE_RATES[k] = 0;
  if (k in HEAD_RATES) HEAD_RATES[k as keyof typeof HEAD_RATES] = 0;
}
if (skip.has("replay-frames")) REPLAY_FAULTS.frames = 0;
if (skip.has("replay-payload")) REPLAY_FAULTS.payload = 0;
if (skip.has("replay-dup")) REPLAY_FAULTS.dup = 0;

/** Most valid seqs the engine side runs ahead of the subscriber (the replay buffer is 10,000). */
const WINDOW = 256;
const BUFFER_STEPS = 10_000;
const STALL_MS = 60_000;

const rand = seededRandom(SEED);
const mut = new Mutator(seededRandom(SEED ^ 0x5eed));
const reference = new ReferenceIndex({});

interface Pod {
  name: string;
  ref: StreamRef;
  engine: FuzzEngine;
  workload: EngineWorkload;
  acked: number;
  state: string;
}
const pods: Pod[] = [];
for (const [name, era] of [
  ["pod-a", "2026-05"],
  ["pod-b", "2026-07"],
] as const) {
  const engine = new FuzzEngine(name, era, "kv", BUFFER_STEPS, mut, REPLAY_FAULTS);
  await engine.start();
  pods.push({
    name,
    ref: { streamId: name, pod: name, rank: null, model: MODEL },
    engine,
    workload: new EngineWorkload(seededRandom(SEED * 31 + pods.length)),
    acked: -1,
    state: "connecting",
  });
}

// --- the subscriber process -----------------------------------------------------------------

let exited: string | null = null;
let stderrTail = "";
let lastProgress = Date.now();
let wake: (() => void) | null = null;
let dumpWaiter: ((m: Extract<FromSubscriber, { t: "dump" }>) => void) | null = null;
const child: ChildProcess = fork(join(HERE, "fuzz", "subscriber.ts"), [], {
  execArgv: [
    "--expose-gc",
    "--import",
    "tsx",
    ...(process.env.KVSYNC_FUZZ_CHILD_NODE_ARGS ?? "").split(" ").filter(Boolean),
  ],
  env: {
    ...process.env,
    KVSYNC_FUZZ_PODS: JSON.stringify(
      pods.map((p) => ({ name: p.name, events: p.engine.eventsEndpoint, replay: p.engine.replayEndpoint })),
    ),
  },
  stdio: ["ignore", "inherit", "pipe", "ipc"],
});
child.stderr?.on("data", (d: Buffer) => {
  stderrTail = (stderrTail + d.toString("utf8")).slice(-4000);
});
child.on("exit", (code, signal) => {
  exited = `exit code ${code} signal ${signal}`;
  wake?.();
});
child.on("message", (m: FromSubscriber) => {
  if (m.t === "dump") {
    dumpWaiter?.(m);
    return;
  }
  for (const s of m.streams) {
    const pod = pods.find((p) => p.name === s.id);
    if (pod === undefined) continue;
    const seq = s.lastSeq ?? -1;
    if (seq !== pod.acked) lastProgress = Date.now();
    pod.acked = seq;
    pod.state = s.state;
  }
  const w = wake;
  wake = null;
  w?.();
});
const nextAck = () =>
  new Promise<void>((r) => {
    wake = r;
  });

async function until(what: string, cond: () => boolean, ms: number): Promise<boolean> {
  const t0 = Date.now();
  while (!cond()) {
    if (exited !== null) return false;
    if (Date.now() - t0 > ms) {
      findings.push(`timeout after ${ms} ms waiting for ${what}`);
      return false;
    }
    await nextAck();
  }
  return true;
}

// --- the soak --------------------------------------------------------------------------------

const findings: string[] = [];
const sent: Record<string, number> = Object.fromEntries(KINDS.map((k) => [k, 0]));
const headPayloadKinds: Partial<Record<PayloadKind, number>> = {};
let mutated = 0;
let validBatches = 0;
let validSent = 0;
let stalled = false;

await until("both streams live", () => pods.every((p) => p.state === "live"), 30_000);
const t0 = Date.now();
const quarterAt: number[] = [];

function count(kind: string, n = 1): void {
  sent[kind] += n;
  mutated += n;
  if (mutated >= ((quarterAt.length + 1) * FRAMES) / 4) quarterAt.push(Date.now());
}

/** How many of a fault to send this step, for an expected `rate` per step. */
function times(rate: number): number {
  const n = Math.floor(rate);
  return n + (rand() < rate - n ? 1 : 0);
}

async function sendGarbage(pod: Pod, kind: string, seq: number, payload: Buffer): Promise<void> {
  const e = pod.engine;
  const acked = pod.acked;
  switch (kind) {
    case "frame-count":
      return e.send(mut.badFrameCount(e.topic, encodeSeq(seq), payload));
    case "seq-length":
      return e.send([e.topic, mut.badSeqLength(), payload]);
    case "seq-huge":
      return e.send([e.topic, mut.hugeSeq(), payload]);
    case "stale-recent": {
      if (acked < 0) return;
      const s = acked - mut.int(Math.min(64, acked + 1));
      return e.send(e.frames(s, mut.anyGarbage(e.buffered(s) ?? payload).payload));
    }
    case "stale-old":
    case "stale-dup": {
      const lo = e.oldestBuffered();
      const hi = acked - 100;
      if (hi < lo) return;
      const s = lo + mut.int(hi - lo + 1);
      const original = e.buffered(s) as Buffer;
      return e.send(e.frames(s, kind === "stale-dup" ? original : mut.anyGarbage(original).payload));
    }
    default: {
      const s = e.nextSeq + 2 ** 32 + mut.int(2 ** 40);
      return e.send(e.frames(s, rand() < 0.5 ? payload : mut.anyGarbage(payload).payload));
    }
  }
}

let step = 0;
let lastReport = Date.now();
for (let tail = 0; tail < 32 && exited === null && !stalled; step++) {
  const pod = pods[step & 1];
  const e = pod.engine;
  const batch = pod.workload.next(null);
  const payload = encodeBatch(batch, e.era);
  const seq = e.record(payload);
  reference.applyBatch(pod.ref, batch);
  validBatches++;
  while (seq - pod.acked > WINDOW && exited === null) {
    if (Date.now() - lastProgress > STALL_MS) {
      stalled = true;
      findings.push(`${pod.name} made no progress for ${STALL_MS} ms (last seq ${pod.acked}, newest ${seq})`);
      break;
    }
    await nextAck();
  }
  if (mutated >= FRAMES) {
    // a clean tail: the last batches arrive as they are, so the end state needs no tail check
    tail++;
    await e.send(e.frames(seq, payload));
    validSent++;
    continue;
  }
  const r = rand();
  const h = HEAD_RATES;
  if (r < h["head-payload"]) {
    const { kind, payload: g } = mut.anyGarbage(payload);
    headPayloadKinds[kind] = (headPayloadKinds[kind] ?? 0) + 1;
    await e.send(e.frames(seq, g));
    count("head-payload");
  } else if (r < h["head-payload"] + h["odd-topic"]) {
    await e.send(e.frames(seq, payload, mut.oddTopic()));
    count("odd-topic");
  } else if (r < h["head-payload"] + h["odd-topic"] + h.withheld) {
    sent.withheld++;
  } else {
    await e.send(e.frames(seq, payload));
    validSent++;
  }
  for (const kind in LIVE_RATES) {
    for (let n = times(LIVE_RATES[kind]); n > 0; n--) {
      await sendGarbage(pod, kind, seq, payload);
      count(kind);
    }
  }
  if (Date.now() - lastReport > 10_000) {
    lastReport = Date.now();
    const s = (lastReport - t0) / 1000;
    console.error(
      `fuzz: ${mutated} mutated messages in ${s.toFixed(0)} s (${Math.round(mutated / s)}/s), ` +
        `${validBatches} valid batches, seqs acked ${pods.map((p) => `${p.name}=${p.acked}/${p.engine.nextSeq - 1}`).join(" ")}`,
    );
  }
}
const sendSeconds = (Date.now() - t0) / 1000;
await until(
  "the index to catch up with the last batch",
  () => pods.every((p) => p.acked === p.engine.nextSeq - 1 && p.state === "live"),
  60_000,
);
const seconds = (Date.now() - t0) / 1000;
for (const p of pods) sent["replay-frames"] += p.engine.stats.replayMutated["replay-frames"];
for (const p of pods) sent["replay-payload"] += p.engine.stats.replayMutated["replay-payload"];
for (const p of pods) sent["replay-dup"] += p.engine.stats.replayMutated["replay-dup"];
const replayMutated = sent["replay-frames"] + sent["replay-payload"] + sent["replay-dup"];

// --- checks ------------------------------------------------------------------------------------

const probes = pods.flatMap((p) => p.workload.probes());
let dump: Extract<FromSubscriber, { t: "dump" }> | null = null;
if (exited === null) {
  dump = await new Promise((resolve) => {
    dumpWaiter = resolve;
    child.send({ t: "dump", probes } satisfies ToSubscriber);
  });
  child.send({ t: "stop" } satisfies ToSubscriber);
}
const crashed = exited;

const index = {
  entries: 0,
  referenceEntries: 0,
  missing: 0,
  stale: 0,
  tierDiffs: 0,
  matchDiffs: 0,
  probes: 0,
};
if (dump !== null) {
  for (const p of pods) {
    const want = new Map(
      reference.streamBlocks(p.name).map((b) => [hashToText(b.hash), [...b.tiers].sort().join(",")]),
    );
    const got = new Map(dump.blocks[p.name].map((s) => s.split(":") as [string, string]));
    index.entries += got.size;
    index.referenceEntries += want.size;
    for (const [h, tiers] of want) {
      const g = got.get(h);
      if (g === undefined) index.missing++;
      else if (g !== tiers) index.tierDiffs++;
    }
    for (const h of got.keys()) if (!want.has(h)) index.stale++;
  }
  const ns = { model: MODEL, lora: null, blockSize: BLOCK_SIZE };
  probes.forEach((tokens, i) => {
    index.probes++;
    if (matchText(reference.match(ns, tokens)) !== dump?.matches[i]) index.matchDiffs++;
  });
}

const memory = memoryGrowth(dump?.samples ?? [], quarterAt);
const statuses = (dump?.statuses ?? []) as Array<Record<string, unknown>>;
const subscriber = Object.fromEntries(
  ["decodeErrors", "replays", "gaps", "resyncs", "restarts", "eventsApplied"].map((k) => [
    k,
    statuses.reduce((s, st) => s + Number(st[k] ?? 0), 0),
  ]),
);
const indexEqual = index.missing + index.stale + index.tierDiffs + index.matchDiffs === 0 && dump !== null;
if (crashed !== null)
  findings.push(`the subscriber process died: ${crashed}; stderr: ${stderrTail.slice(-1500)}`);
// nothing in the soak restarts an engine or loses a batch for good: any drop is a false one
// (invisible to the index check while the replay buffer still holds the whole history)
const drops = (subscriber.restarts ?? 0) + (subscriber.resyncs ?? 0);
if (dump !== null && drops > 0)
  findings.push(
    `${subscriber.restarts} false restarts and ${subscriber.resyncs} false resyncs (stream dropped)`,
  );
// every badly framed message is rejected before any seq logic: one decode error each, at least
const framing = sent["frame-count"] + sent["seq-length"] + sent["seq-huge"] + sent["replay-frames"];
if (dump !== null && (subscriber.decodeErrors ?? 0) < framing)
  findings.push(
    `${framing} badly framed messages sent but only ${subscriber.decodeErrors} decode errors counted`,
  );
if (!indexEqual) findings.push(`index differs from the reference: ${JSON.stringify(index)}`);
if (!(memory.heapGrowthPct < 10))
  findings.push(`heap grew ${memory.heapGrowthPct.toFixed(1)} % (limit 10 %)`);
if (dump !== null && dump.logProblems.length > 0)
  findings.push(`decode errors logged without pod/seq: ${dump.logProblems[0]}`);
for (const [kind, st] of Object.entries(mut.payloadStats))
  for (const code of Object.keys(st.codes))
    if (code.startsWith("NOT_A_PROTOCOL_ERROR"))
      findings.push(`decoder threw a non-protocol error on ${kind}: ${code}`);

const pass =
  crashed === null &&
  !stalled &&
  indexEqual &&
  drops === 0 &&
  memory.heapGrowthPct < 10 &&
  findings.length === 0;
const result = {
  bench: "fuzz",
  node: process.version,
  seed: SEED,
  skipped: [...skip],
  mutatedMessages: mutated + replayMutated,
  liveMutated: mutated,
  replayMutated,
  validBatches,
  validSent,
  seconds: Number(seconds.toFixed(1)),
  sendSeconds: Number(sendSeconds.toFixed(1)),
  framesPerSec: Math.round((mutated + replayMutated) / sendSeconds),
  messagesPerSec: Math.round(pods.reduce((s, p) => s + p.engine.stats.pubMessages, 0) / sendSeconds),
  sent,
  headPayloadKinds,
  payloadKinds: mut.payloadStats,
  replay: pods.map((p) => ({ pod: p.name, era: p.engine.era, ...p.engine.stats })),
  subscriber,
  framingGarbage: framing,
  logEvents: dump?.logEvents ?? {},
  index: { ...index, stats: dump?.indexStats ?? null },
  memory,
  crashes: crashed === null ? 0 : 1,
  stalled,
  findings,
  pass,
};

console.log(summary());
const line = JSON.stringify(result);
console.log(line);
mkdirSync(dirname(args.out), { recursive: true });
writeFileSync(args.out, `${line}\n`);
for (const p of pods) await p.engine.close();
if (exited === null) await new Promise((r) => child.once("exit", r));
process.exit(pass ? 0 : 1);

function memoryGrowth(samples: MemorySample[], quarters: number[]) {
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
  const q2 = samples.filter((s) => s.t >= (quarters[0] ?? Infinity) && s.t <= (quarters[1] ?? -Infinity));
  const end = samples[samples.length - 1];
  const heapQ2 = median(q2.map((s) => s.heapUsed));
  const rssQ2 = median(q2.map((s) => s.rss));
  const mb = (n: number) => Number((n / 2 ** 20).toFixed(1));
  return {
    samples: samples.length,
    q2Samples: q2.length,
    heapQ2MB: mb(heapQ2),
    heapEndMB: mb(end?.heapUsed ?? Number.NaN),
    heapMaxMB: mb(Math.max(...samples.map((s) => s.heapUsed))),
    heapGrowthPct: Number((((end?.heapUsed ?? Number.NaN) / heapQ2 - 1) * 100).toFixed(2)),
    rssQ2MB: mb(rssQ2),
    rssEndMB: mb(end?.rss ?? Number.NaN),
    rssGrowthPct: Number((((end?.rss ?? Number.NaN) / rssQ2 - 1) * 100).toFixed(2)),
  };
}

function summary(): string {
  const rows = Object.entries(sent).map(([k, n]) => `  ${k.padEnd(16)} ${String(n).padStart(9)}`);
  const pk = Object.entries(mut.payloadStats).map(
    ([k, s]) =>
      `  ${k.padEnd(9)} generated ${s.generated}, rejected ${s.rejected}, decoded same ${s.decodedSame}, decoded different ${s.decodedDifferent}`,
  );
  return [
    `fuzz: seed ${SEED}, ${mutated + replayMutated} mutated messages (${mutated} live, ${replayMutated} in replay answers) and ${validBatches} valid batches in ${sendSeconds.toFixed(1)} s: ${result.framesPerSec} mutated/s, ${result.messagesPerSec} PUB messages/s`,
    "sent per kind:",
    ...rows,
    "payload mutations (decoder verdicts; only rejected ones are sent):",
    ...pk,
    `subscriber: ${JSON.stringify(subscriber)}`,
    `index: ${JSON.stringify(index)}`,
    `memory: ${JSON.stringify(memory)}`,
    `crashes: ${result.crashes}, stalled: ${stalled}`,
    ...findings.map((f) => `FINDING: ${f}`),
    pass ? "PASS" : "FAIL",
  ].join("\n");
}
