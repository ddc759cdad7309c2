/**
 * Catch-up from a peer: a starting replica asks `kvsync.<cluster>.snapshot` (a queue group, so
 * one live peer answers) for its index, stream by stream, with the point each stream was at
 * (seq and the fingerprint of that batch). The answer is a run of bounded JSON chunks (version
 * 1), an `end` message with the chunk count, and an empty message. The starting replica loads
 * a stream's entries when its subscriber starts, which then verifies the point against the
 * engine's replay buffer and replays what follows; a restarted engine fails the check and the
 * stream comes from the engine alone (seq-tracker.ts `resume`).
 */
import { randomUUID } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { Msg, NatsConnection, Subscription } from "@nats-io/transport-node";
import type { ResumePoint } from "../events/resume.ts";
import type { StreamExport, StreamRef } from "../index/types.ts";
import type { Logger } from "../util/log.ts";
import {
  type Decoded,
  encodeJson,
  MAX_ID_LENGTH,
  MAX_STREAM_ID_LENGTH,
  PROTOCOL_VERSION,
  parseEnvelope,
  snapshotSubject,
} from "./messages.ts";
import type { ClusterMetrics } from "./metrics.ts";

export interface SnapshotOptions {
  /** target size of one chunk (bytes) */
  chunkBytes: number;
  /** most entries a snapshot carries (streams beyond are left to their engines) */
  maxEntries: number;
  /** longest wait for a whole snapshot (ms) */
  timeoutMs: number;
  /** loaded streams whose pod has not started by then are forgotten (ms) */
  keepMs: number;
}

export const SNAPSHOT_DEFAULTS: SnapshotOptions = {
  chunkBytes: 256 * 1024,
  maxEntries: 4_000_000,
  timeoutMs: 10_000,
  keepMs: 60_000,
};

/**
 * What a replica can hand to a peer: its streams, then each stream's point and entries taken
 * together in one synchronous call (so the entries are exactly those the point reached).
 */
export interface SnapshotSource {
  /** the streams that may have something to give (live, with a point) */
  streams(): StreamRef[];
  /** a stream's point and entries at this instant; null when it has none any more */
  take(ref: StreamRef): SnapshotStream | null;
}

export interface SnapshotStream {
  ref: StreamRef;
  point: ResumePoint;
  data: StreamExport;
}

interface Part {
  s: string;
  pod: string;
  rank: number | null;
  model: string;
  seq: number;
  fp: number;
  len: number;
  ns: Array<[string | null, number]>;
  hashes: string[];
  meta: number[];
  keys: number[];
}

/** Answers snapshot requests, in the queue group once this replica has something to give. */
export class SnapshotServer {
  private sub: Subscription | null = null;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly cluster: { name: string; id: string; whenUp(f: (nc: NatsConnection) => void): void },
    private readonly source: SnapshotSource,
    private readonly metrics: ClusterMetrics,
    private readonly log: Logger,
    private readonly o: SnapshotOptions = SNAPSHOT_DEFAULTS,
  ) {}

  /** Join the queue group once at least one stream has a point (checked every `everyMs`). */
  start(everyMs = 200): void {
    this.timer = setInterval(() => {
      if (this.source.streams().length === 0) return;
      if (this.timer) clearInterval(this.timer);
      this.timer = null;
      this.cluster.whenUp((nc) => this.subscribe(nc));
    }, everyMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.sub?.unsubscribe();
    this.sub = null;
  }

  private subscribe(nc: NatsConnection): void {
    if (this.sub !== null && !this.sub.isClosed()) return;
    this.sub = nc.subscribe(snapshotSubject(this.cluster.name), {
      queue: "snapshot",
      callback: (err, msg) => {
        if (err === null) void this.serve(nc, msg);
      },
    });
  }

  private async serve(nc: NatsConnection, msg: Msg): Promise<void> {
    const env = parseEnvelope(msg.data, this.cluster.name, 4096);
    if (!env.ok || env.msg.t !== "snapreq" || typeof env.msg.id !== "string" || msg.reply === undefined) {
      this.metrics.dropped.inc({ reason: env.ok ? "invalid" : env.reason });
      this.metrics.snapshotsServed.inc({ result: "rejected" });
      return;
    }
    // one stream per event-loop turn: each stream's point and entries are taken in one
    // synchronous call (consistent with each other), and routing and event application run
    // between streams, so a big index never blocks the replica for the whole export
    const head = { v: PROTOCOL_VERSION, c: this.cluster.name, from: this.cluster.id };
    const chunker = new Chunker(this.o.chunkBytes);
    let streams = 0;
    let entries = 0;
    let skipped = 0;
    let chunks = 0;
    let bytes = 0;
    let unflushed = 0;
    let longestSliceMs = 0;
    // what one synchronous export of every stream would have blocked for (the sum of the takes)
    let exportMs = 0;
    // the same in CPU time: on a busy machine a slice's wall time includes being descheduled
    let longestSliceCpuMs = 0;
    let exportCpuMs = 0;
    let sliceStart = performance.now();
    let sliceCpu = process.cpuUsage();
    const send = (parts: Part[]) => {
      const data = encodeJson({ ...head, t: "chunk", i: chunks, parts });
      msg.respond(data);
      chunks++;
      unflushed++;
      bytes += data.length;
    };
    const endSlice = () => {
      longestSliceMs = Math.max(longestSliceMs, performance.now() - sliceStart);
      longestSliceCpuMs = Math.max(longestSliceCpuMs, cpuMs(process.cpuUsage(sliceCpu)));
    };
    try {
      for (const ref of this.source.streams()) {
        const t0 = performance.now();
        const c0 = process.cpuUsage();
        const taken = this.source.take(ref);
        exportMs += performance.now() - t0;
        exportCpuMs += cpuMs(process.cpuUsage(c0));
        if (taken !== null) {
          if (entries + taken.data.hashes.length > this.o.maxEntries) skipped++;
          else {
            entries += taken.data.hashes.length;
            streams++;
            for (const parts of chunker.add(taken)) send(parts);
          }
        }
        endSlice();
        // keep the client's outbound buffer bounded on a large index (flush yields too)
        if (unflushed >= 16) {
          unflushed = 0;
          await nc.flush();
        } else await nextTurn();
        sliceStart = performance.now();
        sliceCpu = process.cpuUsage();
      }
      const last = chunker.rest();
      if (last !== null) send(last);
      msg.respond(encodeJson({ ...head, t: "end", chunks, streams }));
      msg.respond(new Uint8Array(0));
      endSlice();
      await nc.flush();
      this.metrics.snapshotsServed.inc({ result: "ok" });
      this.metrics.snapshotBytes.inc(bytes);
      this.log.info(
        {
          event: "cluster.snapshot_served",
          peer: env.msg.id,
          streams,
          entries,
          chunks,
          bytes,
          skipped,
          longestSliceMs: Math.round(longestSliceMs * 100) / 100,
          exportMs: Math.round(exportMs * 100) / 100,
          longestSliceCpuMs: Math.round(longestSliceCpuMs * 100) / 100,
          exportCpuMs: Math.round(exportCpuMs * 100) / 100,
        },
        "index snapshot sent to a starting peer",
      );
    } catch (err) {
      this.metrics.snapshotsServed.inc({ result: "failed" });
      this.log.warn(
        { event: "cluster.snapshot_failed", peer: env.msg.id, err: String(err) },
        "snapshot send failed",
      );
    }
  }
}

const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;

/** Yield to the event loop (timers, I/O: routing and event application) before going on. */
const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Cuts streams, as they are taken, into chunks of ~chunkBytes (a big stream spans chunks, small
 * ones share one): `add` yields each chunk it fills, `rest` the last partial one.
 */
class Chunker {
  private parts: Part[] = [];
  private size = 0;

  constructor(private readonly chunkBytes: number) {}

  *add({ ref, point, data }: SnapshotStream): Generator<Part[]> {
    let i = 0;
    do {
      const part: Part = {
        s: ref.streamId,
        pod: ref.pod,
        rank: ref.rank,
        model: ref.model,
        seq: point.seq,
        fp: point.fp,
        len: point.len,
        ns: i === 0 ? data.namespaces : [],
        hashes: [],
        meta: [],
        keys: [],
      };
      this.size += 200;
      for (; i < data.hashes.length && this.size < this.chunkBytes; i++) {
        part.hashes.push(data.hashes[i]);
        part.meta.push(data.meta[i]);
        part.keys.push(data.keys[i * 2], data.keys[i * 2 + 1]);
        this.size += data.hashes[i].length + 40;
      }
      this.parts.push(part);
      if (this.size >= this.chunkBytes) {
        yield this.parts;
        this.parts = [];
        this.size = 0;
      }
    } while (i < data.hashes.length);
  }

  rest(): Part[] | null {
    return this.parts.length > 0 ? this.parts : null;
  }
}

export type FetchResult =
  | { result: "loaded"; from: string; streams: SnapshotStream[]; chunks: number; bytes: number }
  | { result: "no_peer" | "failed" | "rejected"; detail: string };

const isInt32 = (x: unknown) =>
  Number.isInteger(x) && (x as number) >= -0x80000000 && (x as number) <= 0x7fffffff;

function checkPart(p: unknown): p is Part {
  if (p === null || typeof p !== "object") return false;
  const x = p as Record<string, unknown>;
  return (
    typeof x.s === "string" &&
    x.s.length > 0 &&
    x.s.length <= MAX_STREAM_ID_LENGTH &&
    typeof x.pod === "string" &&
    typeof x.model === "string" &&
    (x.rank === null || Number.isInteger(x.rank)) &&
    Number.isSafeInteger(x.seq) &&
    (x.seq as number) >= 0 &&
    isInt32(x.fp) &&
    Number.isInteger(x.len) &&
    Array.isArray(x.ns) &&
    x.ns.length <= 1024 &&
    x.ns.every(
      (n) =>
        Array.isArray(n) &&
        n.length === 2 &&
        (n[0] === null || (typeof n[0] === "string" && n[0].length <= 256)) &&
        Number.isInteger(n[1]) &&
        n[1] > 0,
    ) &&
    Array.isArray(x.hashes) &&
    Array.isArray(x.meta) &&
    Array.isArray(x.keys) &&
    x.meta.length === x.hashes.length &&
    x.keys.length === x.hashes.length * 2 &&
    x.hashes.every((h) => typeof h === "string" && h.length > 0 && h.length <= 256) &&
    x.meta.every((m) => Number.isInteger(m) && m > 0 && m < 1 << 13) &&
    x.keys.every(isInt32)
  );
}

/** Ask a live peer for its index; bounded by `maxEntries` and `timeoutMs`. */
export async function fetchSnapshot(
  nc: NatsConnection,
  cluster: { name: string; id: string },
  o: SnapshotOptions = SNAPSHOT_DEFAULTS,
): Promise<FetchResult> {
  const req = encodeJson({
    v: PROTOCOL_VERSION,
    c: cluster.name,
    t: "snapreq",
    id: cluster.id,
    n: randomUUID(),
  });
  let it: AsyncIterable<Msg>;
  try {
    it = await nc.requestMany(snapshotSubject(cluster.name), req, {
      strategy: "sentinel",
      maxWait: o.timeoutMs,
    });
  } catch (err) {
    return { result: noResponders(err) ? "no_peer" : "failed", detail: String(err) };
  }
  const byStream = new Map<string, SnapshotStream>();
  let from: string | null = null;
  let chunks = 0;
  let bytes = 0;
  let entries = 0;
  let ended: Record<string, unknown> | null = null;
  try {
    for await (const m of it) {
      if (m.data.length === 0) break;
      bytes += m.data.length;
      const env: Decoded<Record<string, unknown>> = parseEnvelope(
        m.data,
        cluster.name,
        o.chunkBytes * 4 + 65_536,
      );
      if (!env.ok) return { result: "rejected", detail: `${env.reason}: ${env.detail}` };
      const r = env.msg;
      if (typeof r.from !== "string" || r.from.length > MAX_ID_LENGTH)
        return { result: "rejected", detail: "no sender" };
      from ??= r.from;
      if (r.from !== from) continue;
      if (r.t === "end") {
        ended = r;
        continue;
      }
      if (r.t !== "chunk" || r.i !== chunks || !Array.isArray(r.parts))
        return {
          result: "rejected",
          detail: `unexpected message ${String(r.t)} #${String(r.i)} (want chunk ${chunks})`,
        };
      chunks++;
      for (const p of r.parts) {
        if (!checkPart(p)) return { result: "rejected", detail: `malformed part in chunk ${chunks - 1}` };
        entries += p.hashes.length;
        if (entries > o.maxEntries)
          return { result: "rejected", detail: `more than ${o.maxEntries} entries` };
        let st = byStream.get(p.s);
        if (st === undefined) {
          st = {
            ref: { streamId: p.s, pod: p.pod, rank: p.rank, model: p.model },
            point: { seq: p.seq, fp: p.fp, len: p.len },
            data: { namespaces: [], hashes: [], meta: [], keys: [] },
          };
          byStream.set(p.s, st);
        } else if (st.point.seq !== p.seq)
          return { result: "rejected", detail: `stream ${p.s} at two points` };
        st.data.namespaces.push(...p.ns);
        for (let i = 0; i < p.hashes.length; i++) {
          st.data.hashes.push(p.hashes[i]);
          st.data.meta.push(p.meta[i]);
          st.data.keys.push(p.keys[i * 2], p.keys[i * 2 + 1]);
        }
      }
    }
  } catch (err) {
    return { result: noResponders(err) ? "no_peer" : "failed", detail: String(err) };
  }
  if (from === null) return { result: "no_peer", detail: "no answer" };
  if (ended === null) return { result: "failed", detail: `incomplete: ${chunks} chunks, no end (timeout?)` };
  if (ended.chunks !== chunks || ended.streams !== byStream.size)
    return { result: "rejected", detail: `end says ${String(ended.chunks)} chunks, got ${chunks}` };
  return { result: "loaded", from, streams: [...byStream.values()], chunks, bytes };
}

function noResponders(err: unknown): boolean {
  const s = String((err as { message?: string })?.message ?? err);
  return /no responders|503/i.test(s) || (err as { name?: string })?.name === "NoRespondersError";
}
