import * as zmq from "zeromq";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { decodePubMessage } from "../../../src/protocol/frames.ts";
import type { Pod } from "./cluster.ts";
import { EVENTS_PORT } from "./cluster.ts";
import type { GatewayProcess } from "./gateway.ts";

/**
 * Event-to-index lag, measured from outside: an independent ZeroMQ subscriber on a few pods'
 * PUB sockets records each batch's `seq` and engine `ts`; a poller reads the gateway's
 * `/admin/pods` (`lastSeq` = last applied batch) every `intervalMs`. A batch's lag is the time the
 * gateway was first seen to have applied it minus its `ts` (same host clock), so each sample
 * over-estimates by at most one poll interval plus one admin round trip.
 */
export class LagSampler {
  readonly lagsMs: number[] = [];
  private readonly socks: zmq.Subscriber[] = [];
  private readonly pending = new Map<string, Array<{ seq: number; tsMs: number }>>();
  private running = false;
  private loops: Promise<unknown>[] = [];
  decodeErrors = 0;

  constructor(
    private readonly gw: GatewayProcess,
    private readonly pods: Pod[],
    private readonly intervalMs = 10,
  ) {}

  start(): void {
    this.running = true;
    for (const pod of this.pods) {
      const sock = new zmq.Subscriber({ linger: 0 });
      sock.connect(`tcp://${pod.ip}:${EVENTS_PORT}`);
      sock.subscribe();
      this.socks.push(sock);
      const q: Array<{ seq: number; tsMs: number }> = [];
      this.pending.set(pod.name, q);
      this.loops.push(
        (async () => {
          try {
            for await (const frames of sock) {
              try {
                const msg = decodePubMessage(frames);
                const { batch } = decodeBatch(msg.payload);
                if (q.length < 10_000) q.push({ seq: msg.seq, tsMs: batch.ts * 1000 });
              } catch {
                this.decodeErrors++;
              }
            }
          } catch {
            // socket closed
          }
        })(),
      );
    }
    this.loops.push(this.poll());
  }

  private async poll(): Promise<void> {
    while (this.running) {
      try {
        const listed = await this.gw.pods();
        const now = Date.now();
        for (const p of listed) {
          const q = this.pending.get(p.name);
          if (!q || p.lastSeq === null) continue;
          while (q.length > 0 && q[0].seq <= p.lastSeq) this.lagsMs.push(Math.max(0, now - q.shift()!.tsMs));
        }
      } catch {
        // the gateway is busy: the next poll catches up
      }
      await new Promise((r) => setTimeout(r, this.intervalMs));
    }
  }

  /** Stop once every batch seen so far was applied (or `timeoutMs` passed). */
  async stop(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline && [...this.pending.values()].some((q) => q.length > 0)) {
      await new Promise((r) => setTimeout(r, this.intervalMs));
    }
    await this.close();
  }

  /** Stop at once (idempotent; for failure paths). */
  async close(): Promise<void> {
    this.running = false;
    for (const s of this.socks) s.close();
    this.socks.length = 0;
    await Promise.allSettled(this.loops);
  }

  unapplied(): number {
    let n = 0;
    for (const q of this.pending.values()) n += q.length;
    return n;
  }
}
