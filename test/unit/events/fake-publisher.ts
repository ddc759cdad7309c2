/**
 * A vLLM-like event publisher for subscriber tests: a real XPUB (a PUB that also reports
 * subscriptions, so tests can wait for the subscriber instead of sleeping) and a real ROUTER
 * answering replay requests from a buffer, in either replay layout. Tests control exactly which
 * seqs go out live, which stay in the buffer only, and which replay answers are canned.
 */
import * as zmq from "zeromq";
import { encodePubMessage } from "../../../src/protocol/frames.ts";
import { decodeReplayRequest, encodeReplayEnd, encodeReplayResponse } from "../../../src/protocol/replay.ts";

export interface FakePublisherOptions {
  topic?: string;
  /** replay answers carry the topic frame (vLLM >= PR #45177) */
  topicLayout?: boolean;
  /** no replay ROUTER at all */
  noReplay?: boolean;
  /** bind to these endpoints instead of ephemeral ports (to come back on the same address) */
  pubEndpoint?: string;
  replayEndpoint?: string;
}

export class FakePublisher {
  readonly topic: string;
  readonly topicLayout: boolean;
  pub!: zmq.XPublisher;
  router: zmq.Router | null = null;
  pubEndpoint = "";
  replayEndpoint: string | null = null;
  /** seq -> payload the engine's replay buffer holds */
  readonly buffer = new Map<number, Uint8Array>();
  /** replay requests received (seqs) */
  readonly requests: number[] = [];
  /** canned answers: request seq -> raw frames of every message (end marker included) */
  readonly canned = new Map<number, Uint8Array[][]>();
  /** do not answer replay requests (to test timeouts) */
  silent = false;
  private subscriptions = 0;
  private subWaiters: Array<() => void> = [];
  private closed = false;
  private routerLoop: Promise<void> | null = null;
  private xpubLoop: Promise<void> | null = null;

  constructor(private readonly opts: FakePublisherOptions = {}) {
    this.topic = opts.topic ?? "";
    this.topicLayout = opts.topicLayout ?? false;
  }

  async start(): Promise<this> {
    this.pub = new zmq.XPublisher({ linger: 0, sendHighWaterMark: 100_000 });
    await this.pub.bind(this.opts.pubEndpoint ?? "tcp://127.0.0.1:*");
    this.pubEndpoint = this.pub.lastEndpoint as string;
    this.xpubLoop = this.watchSubscriptions(this.pub);
    if (!this.opts.noReplay) {
      this.router = new zmq.Router({ linger: 0 });
      await this.router.bind(this.opts.replayEndpoint ?? "tcp://127.0.0.1:*");
      this.replayEndpoint = this.router.lastEndpoint as string;
      this.routerLoop = this.serve(this.router);
    }
    return this;
  }

  /** Resolves once `n` subscriptions (in total) have reached the publisher. */
  async waitSubscribed(n = 1, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.subscriptions < n) {
      const left = deadline - Date.now();
      if (left <= 0)
        throw new Error(`no subscriber after ${timeoutMs} ms (have ${this.subscriptions}, want ${n})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.subWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Put a batch in the buffer and (unless `live` is false) send it on the PUB. */
  async publish(seq: number, payload: Uint8Array, live = true): Promise<void> {
    this.buffer.set(seq, payload);
    if (live) await this.pub.send(encodePubMessage(this.topic, seq, payload));
  }

  /** Send raw frames on the PUB (malformed messages). */
  async sendRaw(frames: Uint8Array[]): Promise<void> {
    await this.pub.send(frames);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.pub.close();
    this.router?.close();
    await Promise.allSettled([this.routerLoop, this.xpubLoop]);
  }

  private async watchSubscriptions(pub: zmq.XPublisher): Promise<void> {
    try {
      for await (const [msg] of pub) {
        if (msg.length > 0 && msg[0] === 1) {
          this.subscriptions++;
          for (const w of this.subWaiters.splice(0)) w();
        }
      }
    } catch {
      // closed
    }
  }

  private async serve(router: zmq.Router): Promise<void> {
    try {
      for await (const [id, ...frames] of router) {
        let from: number;
        try {
          from = decodeReplayRequest(frames);
        } catch {
          continue;
        }
        this.requests.push(from);
        if (this.silent) continue;
        const canned = this.canned.get(from);
        if (canned) {
          for (const msg of canned) await router.send([id, ...msg]);
          continue;
        }
        const seqs = [...this.buffer.keys()].filter((s) => s >= from).sort((a, b) => a - b);
        for (const s of seqs) {
          await router.send([
            id,
            ...encodeReplayResponse(
              s,
              this.buffer.get(s) as Uint8Array,
              this.topicLayout ? this.topic : null,
            ),
          ]);
        }
        await router.send([id, ...encodeReplayEnd(this.topicLayout)]);
      }
    } catch {
      // closed
    }
  }
}
