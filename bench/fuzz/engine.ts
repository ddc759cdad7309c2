/**
 * The soak's engine side of one pod: a PUB and a replay ROUTER on real TCP sockets speaking
 * vLLM's framing (src/protocol), a replay buffer of `bufferSteps` batches like vLLM's, and hooks
 * to put malformed messages on the PUB and into replay answers. Unlike src/engine/publisher.ts it
 * sends whatever frames it is handed (that publisher only ever writes valid messages).
 */
import * as zmq from "zeromq";
import type { WireEra } from "../../src/protocol/encode.ts";
import { encodeSeq } from "../../src/protocol/frames.ts";
import { decodeReplayRequest, encodeReplayResponse } from "../../src/protocol/replay.ts";
import type { Mutator, PayloadKind } from "./mutate.ts";

export const REPLAY_KINDS = ["replay-frames", "replay-payload", "replay-dup"] as const;
export type ReplayKind = (typeof REPLAY_KINDS)[number];

export interface ReplayFaults {
  /** per answer message: an extra badly framed message before it */
  frames: number;
  /** per answer message: its payload replaced by one the decoder rejects */
  payload: number;
  /** per answer message: an extra message after it with the same seq and a rejected payload */
  dup: number;
}

export class FuzzEngine {
  readonly pub = new zmq.Publisher({ linger: 0, sendHighWaterMark: 1_000_000 });
  readonly router = new zmq.Router({ linger: 0, sendHighWaterMark: 1_000_000 });
  readonly topic: Buffer;
  eventsEndpoint = "";
  replayEndpoint = "";
  /** next seq to assign */
  nextSeq = 0;
  private readonly ring: Array<{ seq: number; payload: Buffer } | undefined>;
  private ringStart = 0;
  private ringLen = 0;
  private closed = false;
  private loop: Promise<void> | null = null;
  readonly stats = {
    pubMessages: 0,
    replayRequests: 0,
    replayBadRequests: 0,
    replayAnswers: 0,
    replayMutated: { "replay-frames": 0, "replay-payload": 0, "replay-dup": 0 } as Record<ReplayKind, number>,
    /** replay answer payload kinds sent */
    replayPayloadKinds: {} as Partial<Record<PayloadKind, number>>,
  };

  constructor(
    readonly name: string,
    readonly era: WireEra,
    topic: string,
    bufferSteps: number,
    private readonly mut: Mutator,
    private readonly faults: ReplayFaults,
  ) {
    this.topic = Buffer.from(topic, "utf8");
    this.ring = new Array(bufferSteps);
  }

  /** vLLM's 4-frame replay layout (with topic) for the map era, the 3-frame one before. */
  private get topicLayout(): boolean {
    return this.era === "2026-07";
  }

  async start(): Promise<void> {
    await this.pub.bind("tcp://127.0.0.1:*");
    await this.router.bind("tcp://127.0.0.1:*");
    this.eventsEndpoint = this.pub.lastEndpoint as string;
    this.replayEndpoint = this.router.lastEndpoint as string;
    this.loop = this.serveReplay();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.pub.close();
    this.router.close();
    await this.loop?.catch(() => undefined);
  }

  /** Assign the next seq to a valid payload and keep it in the replay buffer. */
  record(payload: Buffer): number {
    const seq = this.nextSeq++;
    const cap = this.ring.length;
    if (this.ringLen < cap) {
      this.ring[(this.ringStart + this.ringLen) % cap] = { seq, payload };
      this.ringLen++;
    } else {
      this.ring[this.ringStart] = { seq, payload };
      this.ringStart = (this.ringStart + 1) % cap;
    }
    return seq;
  }

  /** The buffered payload of `seq`, if the buffer still holds it. */
  buffered(seq: number): Buffer | undefined {
    const first = this.ring[this.ringStart]?.seq;
    if (first === undefined || seq < first || seq >= this.nextSeq) return undefined;
    return this.ring[(this.ringStart + (seq - first)) % this.ring.length]?.payload;
  }

  oldestBuffered(): number {
    return this.ring[this.ringStart]?.seq ?? 0;
  }

  async send(frames: Buffer[]): Promise<void> {
    await this.pub.send(frames);
    this.stats.pubMessages++;
  }

  /** `[topic, seq, payload]` with this engine's topic. */
  frames(seq: number, payload: Buffer, topic: Buffer = this.topic): Buffer[] {
    return [topic, encodeSeq(seq), payload];
  }

  private async serveReplay(): Promise<void> {
    const topic = this.topicLayout ? this.name : null;
    try {
      for await (const [id, ...rest] of this.router) {
        let from: number;
        try {
          from = decodeReplayRequest(rest);
        } catch {
          this.stats.replayBadRequests++;
          continue;
        }
        this.stats.replayRequests++;
        const out: Array<{ seq: number; payload: Buffer }> = [];
        for (let i = 0; i < this.ringLen; i++) {
          const e = this.ring[(this.ringStart + i) % this.ring.length]!;
          if (e.seq >= from) out.push(e);
        }
        for (const e of out) await this.answer(id, e.seq, e.payload, topic);
        await this.router.send([
          id,
          ...encodeReplayResponse(null, Buffer.alloc(0), topic === null ? null : ""),
        ]);
      }
    } catch (err) {
      if (!this.closed) throw err;
    }
  }

  private async answer(id: Buffer, seq: number, payload: Buffer, topic: string | null): Promise<void> {
    const m = this.mut;
    const f = this.faults;
    if (m.rand() < f.frames) {
      this.stats.replayMutated["replay-frames"]++;
      await this.router.send([id, ...this.badReplayFrames(seq, payload, topic)]);
    }
    let body = payload;
    if (m.rand() < f.payload) {
      const g = m.anyGarbage(payload);
      body = g.payload;
      this.stats.replayMutated["replay-payload"]++;
      this.stats.replayPayloadKinds[g.kind] = (this.stats.replayPayloadKinds[g.kind] ?? 0) + 1;
    }
    await this.router.send([id, ...encodeReplayResponse(seq, body, topic)]);
    this.stats.replayAnswers++;
    if (m.rand() < f.dup) {
      this.stats.replayMutated["replay-dup"]++;
      await this.router.send([id, ...encodeReplayResponse(seq, m.anyGarbage(payload).payload, topic)]);
    }
  }

  /** A replay answer message no subscriber can parse: frame count, delimiter, or seq frame. */
  private badReplayFrames(seq: number, payload: Buffer, topic: string | null): Buffer[] {
    const m = this.mut;
    const good = encodeReplayResponse(seq, payload, topic);
    switch (m.int(4)) {
      case 0:
        return good.slice(0, 2);
      case 1:
        return [...good, m.bytes(m.int(8)), Buffer.alloc(0)].slice(0, 5);
      case 2:
        return [m.bytes(1 + m.int(8)), ...good.slice(1)];
      default: {
        const out = [...good];
        out[topic === null ? 1 : 2] = m.rand() < 0.5 ? m.badSeqLength() : m.hugeSeq(false);
        return out;
      }
    }
  }
}
