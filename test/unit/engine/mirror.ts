/**
 * Test helpers for the mock engine: an independent subscriber that rebuilds an engine's cache
 * from its KV events (plain zeromq SUB + DEALER, the protocol module's decoders). Not a test
 * file itself.
 */
import * as zmq from "zeromq";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { decodePubMessage } from "../../../src/protocol/frames.ts";
import { hashToText } from "../../../src/protocol/hash.ts";
import { decodeReplayResponse, encodeReplayRequest } from "../../../src/protocol/replay.ts";
import { type EventBatch, tierOf } from "../../../src/protocol/types.ts";

export class MirrorSubscriber {
  /**
   * hash text -> tier -> copies held. The engine (as vLLM) sends a BlockStored per physical copy
   * of a hash (two requests that computed one prefix at once) and a BlockRemoved per evicted copy,
   * so a tier goes only with its last copy.
   */
  readonly blocks = new Map<string, Map<string, number>>();
  /** seqs received live on the SUB socket, in arrival order */
  readonly liveSeqs: number[] = [];
  /** seqs applied (live or replayed), in order */
  readonly appliedSeqs: number[] = [];
  /** seqs that neither live nor replay could provide */
  readonly missingSeqs: number[] = [];
  readonly topics = new Set<string>();
  readonly dpRanks = new Set<number | null>();
  /** next expected seq */
  next = 0;
  decodeErrors = 0;
  private readonly sub = new zmq.Subscriber({ linger: 0 });
  private readonly dealer: zmq.Dealer | null;
  private lock: Promise<unknown> = Promise.resolve();
  private loop: Promise<void> | null = null;
  private closed = false;

  constructor(
    readonly eventsEndpoint: string,
    readonly replayEndpoint: string | null,
    readonly topic = "",
  ) {
    this.dealer = replayEndpoint === null ? null : new zmq.Dealer({ linger: 0, receiveTimeout: 5000 });
  }

  start(): this {
    this.sub.connect(this.eventsEndpoint);
    return this.startCommon();
  }

  /** Bind the SUB instead (for engines in vLLM's connect mode); resolves the bound endpoint. */
  static async bound(endpoint: string): Promise<{ mirror: MirrorSubscriber; endpoint: string }> {
    const m = new MirrorSubscriber(endpoint, null);
    await m.sub.bind(endpoint);
    m.startCommon();
    return { mirror: m, endpoint: m.sub.lastEndpoint ?? endpoint };
  }

  private startCommon(): this {
    this.sub.subscribe(this.topic);
    if (this.dealer !== null && this.replayEndpoint !== null) this.dealer.connect(this.replayEndpoint);
    this.loop = this.run();
    return this;
  }

  private async run(): Promise<void> {
    try {
      for await (const frames of this.sub) {
        const msg = decodePubMessage(frames);
        this.liveSeqs.push(msg.seq);
        this.topics.add(msg.topic);
        await this.serial(async () => {
          if (msg.seq < this.next) return;
          if (msg.seq > this.next && this.dealer !== null) await this.fill(msg.seq);
          if (msg.seq > this.next) for (let s = this.next; s < msg.seq; s++) this.missingSeqs.push(s);
          this.apply(msg.seq, msg.payload);
        });
      }
    } catch (err) {
      if (!this.closed) throw err;
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lock.then(fn);
    this.lock = p.catch(() => undefined);
    return p;
  }

  private apply(seq: number, payload: Uint8Array): void {
    let batch: EventBatch;
    try {
      batch = decodeBatch(payload).batch;
    } catch {
      this.decodeErrors++;
      this.next = seq + 1;
      return;
    }
    this.dpRanks.add(batch.dpRank);
    for (const ev of batch.events) {
      if (ev.type === "AllBlocksCleared") {
        this.blocks.clear();
        continue;
      }
      const tier = tierOf(ev.medium);
      for (const h of ev.blockHashes) {
        const key = hashToText(h);
        let tiers = this.blocks.get(key);
        if (ev.type === "BlockStored") {
          if (tiers === undefined) {
            tiers = new Map();
            this.blocks.set(key, tiers);
          }
          tiers.set(tier, (tiers.get(tier) ?? 0) + 1);
        } else if (tiers !== undefined) {
          const left = (tiers.get(tier) ?? 0) - 1;
          if (left > 0) tiers.set(tier, left);
          else tiers.delete(tier);
          if (tiers.size === 0) this.blocks.delete(key);
        }
      }
    }
    this.appliedSeqs.push(seq);
    this.next = seq + 1;
  }

  /** Replay from `next`, applying batches below `until` (gaps the buffer lacks are recorded). */
  private async fill(until: number): Promise<void> {
    const msgs = await this.requestReplay(this.next);
    for (const m of msgs) {
      if (m.seq === null || m.seq < this.next || m.seq >= until) continue;
      for (let s = this.next; s < m.seq; s++) this.missingSeqs.push(s);
      this.apply(m.seq, m.payload);
    }
  }

  /** Apply everything the replay buffer holds beyond what was applied (call at quiescence). */
  catchUp(): Promise<void> {
    return this.serial(() => this.fill(Number.MAX_SAFE_INTEGER));
  }

  /** One replay round trip: every answer message up to and including the end marker. */
  async requestReplay(
    from: number,
  ): Promise<Array<{ seq: number | null; topic: string | null; payload: Buffer; frames: number }>> {
    if (this.dealer === null) throw new Error("no replay endpoint");
    await this.dealer.send(encodeReplayRequest(from));
    const out: Array<{ seq: number | null; topic: string | null; payload: Buffer; frames: number }> = [];
    for (;;) {
      const frames = await this.dealer.receive();
      const r = decodeReplayResponse(frames);
      out.push({ ...r, frames: frames.length });
      if (r.seq === null) return out;
    }
  }

  replay(
    from: number,
  ): Promise<Array<{ seq: number | null; topic: string | null; payload: Buffer; frames: number }>> {
    return this.serial(() => this.requestReplay(from));
  }

  /** The rebuilt cache in /debug/kv-cache's shape, sorted. */
  snapshot(): Array<{ hash: string; tiers: string[] }> {
    return normalize([...this.blocks].map(([hash, tiers]) => ({ hash, tiers: [...tiers.keys()] })));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.sub.close();
    this.dealer?.close();
    await this.loop?.catch(() => undefined);
    await this.lock;
  }
}

export function normalize(
  blocks: Array<{ hash: string; tiers: string[] }>,
): Array<{ hash: string; tiers: string[] }> {
  return blocks
    .map((b) => ({ hash: b.hash, tiers: [...b.tiers].sort() }))
    .sort((a, b) => (a.hash < b.hash ? -1 : a.hash > b.hash ? 1 : 0));
}

export async function getJson<T = Record<string, unknown>>(url: string): Promise<T> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`GET ${url}: ${r.status} ${await r.text()}`);
  return (await r.json()) as T;
}

export async function postJson(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const r = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
  const text = await r.text();
  return { status: r.status, body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>) };
}
