import * as zmq from "zeromq";
import "../protocol/zmq-context.ts";
import { encodeBatch, type WireEra } from "../protocol/encode.ts";
import { dataParallelEndpoint } from "../protocol/endpoints.ts";
import { encodePubMessage } from "../protocol/frames.ts";
import { decodeReplayRequest, encodeReplayResponse } from "../protocol/replay.ts";
import type { KvEvent } from "../protocol/types.ts";
import type { Logger } from "../util/log.ts";
import { wallClockMs } from "../util/wall-clock.ts";

/**
 * vLLM's ZmqEventPublisher, reproduced: one PUB message `[topic, seq, payload]` per scheduler
 * step that had events, seq from 0 at every start; a ROUTER answering replay requests
 * `["", seq]` with every buffered batch >= seq and then the end marker, in the era's layout.
 *
 * Fault knobs (for chaos tests):
 *  - `dropRate`: the batch gets its seq and goes into the replay buffer but is not sent — what
 *    a PUB high-water-mark drop looks like (vLLM appends to the buffer whether or not the PUB
 *    delivered), so subscribers see a gap that replay can fill.
 *  - `failRate`: the batch consumes its seq but is neither sent nor buffered — what a failed
 *    encode looks like in vLLM; a gap replay cannot fill.
 *  - `loseRate`: the batch never reaches the publisher: no seq, not sent, not buffered — an
 *    engine that loses events before publishing them. Seqs stay contiguous and replay agrees,
 *    so nothing on the wire shows it: only the engines' reported cache hits do (the gateway's
 *    prediction feedback).
 *  - pause/resume: while paused, batches are buffered (replayable) but not sent.
 */
export type EventFormat = "map" | "array";

/**
 * Which engine's publisher the mock reproduces (docs/engines.md): vLLM (its `--event-format`
 * picks the map or array era), SGLang 2026 (medium, salt metadata), SGLang 2025 (no medium, no
 * salts), or TensorRT-LLM through Dynamo's publisher (dict events, top-level cache_salt).
 */
export type EngineFlavor = "vllm" | "sglang" | "sglang-2025" | "trtllm";
export const ENGINE_FLAVORS: readonly EngineFlavor[] = ["vllm", "sglang", "sglang-2025", "trtllm"];

export function eraOf(format: EventFormat, flavor: EngineFlavor = "vllm"): WireEra {
  if (flavor === "sglang") return "sglang-2026";
  if (flavor === "sglang-2025") return "sglang-2025";
  if (flavor === "trtllm") return "trtllm";
  return format === "map" ? "2026-07" : "2026-05";
}

/** vLLM's rule: bind when the endpoint has a wildcard or is ipc/inproc, else connect. */
export function pubShouldBind(endpoint: string): boolean {
  return (
    endpoint.includes("*") ||
    endpoint.includes("::") ||
    endpoint.startsWith("ipc://") ||
    endpoint.startsWith("inproc://")
  );
}

/**
 * Endpoint the publisher of data-parallel rank r binds / connects (dataParallelEndpoint); a tcp
 * endpoint without a numeric port ("*": ephemeral) stays as given, every rank gets its own port;
 * a rank past port 65535 is an error (it would silently share rank 0's endpoint).
 */
export function offsetEndpoint(endpoint: string, offset: number): string {
  if (endpoint.startsWith("tcp://") && !/:\d+$/.test(endpoint)) return endpoint;
  const e = dataParallelEndpoint(endpoint, offset);
  if (e === null) throw new RangeError(`no endpoint for data-parallel rank ${offset} of ${endpoint}`);
  return e;
}

/** Replace the host of a tcp endpoint (for `--hosts`). */
export function withHost(endpoint: string, host: string): string {
  const m = /^tcp:\/\/(.*):([^:\]]+)$/.exec(endpoint);
  if (m === null) return endpoint;
  const h = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `tcp://${h}:${m[2]}`;
}

export interface PublisherOptions {
  endpoint: string;
  /** null = vLLM's rule (pubShouldBind) */
  bind?: boolean | null;
  replayEndpoint: string | null;
  topic: string;
  format: EventFormat;
  /** default "vllm" */
  flavor?: EngineFlavor;
  bufferSteps: number;
  dpRank: number | null;
  dropRate: number;
  /** default 0 */
  failRate?: number;
  loseRate: number;
  random: () => number;
  log: Logger;
  /** max messages waiting for the PUB socket before they count as HWM drops */
  maxSendQueue?: number;
}

export interface PublisherStats {
  /** next seq to be assigned */
  nextSeq: number;
  /** seq of the last message handed to the PUB socket (-1: none yet) */
  lastSentSeq: number;
  sent: number;
  dropped: number;
  /** batches lost before they got a seq (`loseRate`) */
  lost: number;
  /** batches whose seq was consumed without being sent or buffered (`failRate`, a failed encode) */
  failed: number;
  pausedBatches: number;
  replayRequests: number;
  replayErrors: number;
  buffered: number;
  paused: boolean;
}

export class EventPublisher {
  private readonly o: PublisherOptions;
  private readonly era: WireEra;
  private readonly pub = new zmq.Publisher({ linger: 0, sendHighWaterMark: 100_000 });
  private readonly router: zmq.Router | null;
  private readonly ring: Array<{ seq: number; payload: Buffer } | undefined>;
  private ringStart = 0;
  private ringLen = 0;
  private seq = 0;
  private lastSentSeq = -1;
  private queue: Array<{ seq: number; frames: Buffer[] }> = [];
  private sending = false;
  private closed = false;
  private paused = false;
  private replayLoop: Promise<void> | null = null;
  private idleWaiters: Array<() => void> = [];
  eventsEndpoint = "";
  replayEndpoint: string | null = null;
  readonly stats = {
    sent: 0,
    dropped: 0,
    lost: 0,
    failed: 0,
    pausedBatches: 0,
    replayRequests: 0,
    replayErrors: 0,
    sendErrors: 0,
  };

  constructor(o: PublisherOptions) {
    this.o = o;
    this.era = eraOf(o.format, o.flavor);
    this.ring = new Array(Math.max(1, o.bufferSteps));
    this.router = o.replayEndpoint === null ? null : new zmq.Router({ linger: 0 });
  }

  async start(): Promise<void> {
    const ep = this.o.endpoint;
    if (this.o.bind ?? pubShouldBind(ep)) {
      await this.pub.bind(ep);
      this.eventsEndpoint = this.pub.lastEndpoint ?? ep;
    } else {
      this.pub.connect(ep);
      this.eventsEndpoint = ep;
    }
    if (this.router !== null && this.o.replayEndpoint !== null) {
      await this.router.bind(this.o.replayEndpoint);
      this.replayEndpoint = this.router.lastEndpoint ?? this.o.replayEndpoint;
      this.replayLoop = this.serveReplay(this.router);
    }
    this.o.log.info(
      {
        event: "publisher.started",
        events: this.eventsEndpoint,
        replay: this.replayEndpoint,
        rank: this.o.dpRank,
      },
      "KV event publisher started",
    );
  }

  /** Publish one step's events (no-op for an empty step). */
  publish(events: KvEvent[]): void {
    if (events.length === 0 || this.closed) return;
    if (this.o.loseRate > 0 && this.o.random() < this.o.loseRate) {
      this.stats.lost++;
      this.o.log.debug({ event: "publisher.batch_lost", next: this.seq }, "fault injection: batch lost");
      return;
    }
    const seq = this.seq++;
    let payload: Buffer;
    try {
      // stamped like vLLM's time.time(): sub-millisecond, so a router's lag of a few ms is measurable
      payload = encodeBatch({ ts: wallClockMs() / 1000, events, dpRank: this.o.dpRank }, this.era);
    } catch (err) {
      this.stats.failed++;
      this.o.log.error({ event: "publisher.encode_error", seq, err }, "failed to encode event batch");
      return;
    }
    const fail = this.o.failRate ?? 0;
    if (fail > 0 && this.o.random() < fail) {
      this.stats.failed++;
      this.o.log.debug({ event: "publisher.batch_failed", seq }, "fault injection: batch failed");
      return;
    }
    this.enqueue(seq, payload);
  }

  /**
   * Publish one step's batch already encoded in this publisher's era (the scale benchmark
   * encodes from templates); it gets the next seq and the same buffering, faults and queueing.
   */
  publishEncoded(payload: Buffer): void {
    if (this.closed) return;
    this.enqueue(this.seq++, payload);
  }

  private enqueue(seq: number, payload: Buffer): void {
    this.buffer(seq, payload);
    if (this.paused) {
      this.stats.pausedBatches++;
      return;
    }
    if (this.o.dropRate > 0 && this.o.random() < this.o.dropRate) {
      this.stats.dropped++;
      this.o.log.debug({ event: "publisher.batch_dropped", seq }, "fault injection: batch dropped");
      return;
    }
    if (this.queue.length >= (this.o.maxSendQueue ?? 10_000)) {
      this.stats.dropped++;
      return;
    }
    this.queue.push({ seq, frames: encodePubMessage(this.o.topic, seq, payload) });
    if (!this.sending) void this.drain();
  }

  pause(): void {
    this.paused = true;
    this.o.log.info({ event: "publisher.paused", rank: this.o.dpRank }, "event publishing paused");
  }

  resume(): void {
    this.paused = false;
    this.o.log.info({ event: "publisher.resumed", rank: this.o.dpRank }, "event publishing resumed");
  }

  get isPaused(): boolean {
    return this.paused;
  }

  snapshot(): PublisherStats {
    return {
      nextSeq: this.seq,
      lastSentSeq: this.lastSentSeq,
      sent: this.stats.sent,
      dropped: this.stats.dropped,
      lost: this.stats.lost,
      failed: this.stats.failed,
      pausedBatches: this.stats.pausedBatches,
      replayRequests: this.stats.replayRequests,
      replayErrors: this.stats.replayErrors,
      buffered: this.ringLen,
      paused: this.paused,
    };
  }

  /** Resolves when every queued PUB message was handed to ZeroMQ. */
  flushed(): Promise<void> {
    if (!this.sending && this.queue.length === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.queue = [];
    this.pub.close();
    this.router?.close();
    await this.replayLoop?.catch(() => undefined);
    for (const r of this.idleWaiters.splice(0)) r();
  }

  private buffer(seq: number, payload: Buffer): void {
    const cap = this.ring.length;
    if (this.ringLen < cap) {
      this.ring[(this.ringStart + this.ringLen) % cap] = { seq, payload };
      this.ringLen++;
    } else {
      this.ring[this.ringStart] = { seq, payload };
      this.ringStart = (this.ringStart + 1) % cap;
    }
  }

  private async drain(): Promise<void> {
    this.sending = true;
    try {
      while (this.queue.length > 0 && !this.closed) {
        const msg = this.queue.shift()!;
        try {
          await this.pub.send(msg.frames);
          this.stats.sent++;
          this.lastSentSeq = msg.seq;
        } catch (err) {
          if (this.closed) break;
          this.stats.sendErrors++;
          this.o.log.warn({ event: "publisher.send_error", err }, "PUB send failed");
        }
      }
    } finally {
      this.sending = false;
      for (const r of this.idleWaiters.splice(0)) r();
    }
  }

  private async serveReplay(router: zmq.Router): Promise<void> {
    const topic = this.era === "2026-07" ? this.o.topic : null;
    try {
      for await (const frames of router) {
        const [id, ...rest] = frames;
        let from: number;
        try {
          from = decodeReplayRequest(rest);
        } catch (err) {
          this.stats.replayErrors++;
          this.o.log.warn({ event: "replay.bad_request", err: String(err) }, "bad replay request");
          continue;
        }
        this.stats.replayRequests++;
        // snapshot the matching batches first: publishing may continue while we send
        const out: Array<{ seq: number; payload: Buffer }> = [];
        const cap = this.ring.length;
        for (let i = 0; i < this.ringLen; i++) {
          const e = this.ring[(this.ringStart + i) % cap]!;
          if (e.seq >= from) out.push(e);
        }
        this.o.log.debug({ event: "replay.request", from, batches: out.length }, "replay request");
        for (const e of out) await router.send([id, ...encodeReplayResponse(e.seq, e.payload, topic)]);
        await router.send([id, ...encodeReplayResponse(null, Buffer.alloc(0), topic === null ? null : "")]);
      }
    } catch (err) {
      if (!this.closed) this.o.log.error({ event: "replay.failed", err }, "replay server stopped");
    }
  }
}
