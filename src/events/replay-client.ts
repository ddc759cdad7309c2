/**
 * The replay side of one event stream: each request gets a fresh DEALER on the engine's replay
 * ROUTER (so no late answer of an earlier request can mix in), with send and receive timeouts so a
 * stopped or cut-off engine fails the replay instead of hanging it. Requests are paced: a token
 * bucket bounds each stream to `maxReplaysPerSecond` on average, and a retry of a replay that fell
 * short waits a doubling delay, so no fault makes a stream flood its engine.
 */
import * as zmq from "zeromq";
import "../protocol/zmq-context.ts";
import { decodeReplayResponse, encodeReplayRequest } from "../protocol/replay.ts";
import { backoffDelay } from "../util/backoff.ts";
import type { Logger } from "../util/log.ts";
import { retryOnEintr } from "./eintr.ts";
import type { ReplayHandlers } from "./event-source.ts";

export interface ReplayClientOptions {
  replayTimeoutMs: number;
  maxReplayBatches: number;
  maxReplaysPerSecond: number;
  replayRetryMs: number;
  retryMaxMs: number;
}

export class ReplayClient {
  private dealer: zmq.Dealer | null = null;
  private closed = false;
  private tokens: number;
  private tokensAt = performance.now();
  private throttleLoggedAt = Number.NEGATIVE_INFINITY;
  private readonly sleeps = new Set<() => void>();
  private readonly runs = new Set<Promise<void>>();

  constructor(
    private readonly endpoint: string,
    private readonly opts: ReplayClientOptions,
    private readonly on: ReplayHandlers,
    private readonly log: Logger,
    private readonly ctx: () => Record<string, unknown>,
  ) {
    this.tokens = opts.maxReplaysPerSecond;
  }

  /** Start a replay from `fromSeq`; `attempt` > 0 retries one that fell short (waits first). */
  request(fromSeq: number, attempt: number): void {
    const retryWait =
      attempt > 0 ? backoffDelay(attempt - 1, this.opts.replayRetryMs, this.opts.retryMaxMs) : 0;
    const bucketWait = this.takeToken();
    if (bucketWait > 0) {
      this.on.throttled(bucketWait);
      // one line per burst, not per replay: the bound exists because replays can come in floods
      if (performance.now() - this.throttleLoggedAt > 5000) {
        this.throttleLoggedAt = performance.now();
        this.log.warn(
          { event: "subscriber.replay_throttled", ...this.ctx(), fromSeq, delayMs: bucketWait },
          "replay rate bound reached: replays held back",
        );
      }
    }
    if (attempt > 0)
      this.log.info(
        { event: "subscriber.replay_retry", ...this.ctx(), fromSeq, attempt },
        "the last replay ended short of the queued batch: retrying",
      );
    const p = this.run(fromSeq, Math.max(retryWait, bucketWait));
    this.runs.add(p);
    p.finally(() => this.runs.delete(p));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.dealer?.close();
    this.dealer = null;
    for (const wake of [...this.sleeps]) wake();
    this.sleeps.clear();
    await Promise.allSettled([...this.runs]);
  }

  /** ms to wait before the next replay may start (token bucket), taking a token. */
  private takeToken(): number {
    const rate = Math.max(0.1, this.opts.maxReplaysPerSecond);
    const now = performance.now();
    this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) / 1000) * rate);
    this.tokensAt = now;
    this.tokens -= 1;
    return this.tokens >= 0 ? 0 : Math.ceil((-this.tokens / rate) * 1000);
  }

  /** A timer that close() cuts short. */
  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.sleeps.delete(done);
        resolve();
      }, ms);
      const done = () => {
        clearTimeout(t);
        resolve();
      };
      this.sleeps.add(done);
    });
  }

  private async run(fromSeq: number, delayMs: number): Promise<void> {
    // let the caller finish its synchronous step first: the tracker expects answers later
    await Promise.resolve();
    if (delayMs > 0) await this.sleep(delayMs);
    if (this.closed) return;
    let dealer: zmq.Dealer;
    try {
      dealer = new zmq.Dealer({
        linger: 0,
        receiveTimeout: this.opts.replayTimeoutMs,
        sendTimeout: this.opts.replayTimeoutMs,
        receiveHighWaterMark: 10_000,
      });
    } catch (err) {
      // no socket (EMFILE: the process's or the context's limit): a failed replay, retried as
      // any other, never an exception out of this loop
      this.log.warn(
        { event: "subscriber.replay_failed", ...this.ctx(), fromSeq, received: 0, err },
        "replay failed: no socket",
      );
      this.on.failed(fromSeq, err as Error, 0);
      this.on.settled();
      return;
    }
    this.dealer = dealer;
    let count = 0;
    try {
      // an interrupted connect did nothing: again at once rather than a failed replay (eintr.ts)
      retryOnEintr(() => dealer.connect(this.endpoint));
      await dealer.send(encodeReplayRequest(fromSeq));
      for (;;) {
        const frames = await dealer.receive();
        if (this.closed) return;
        let r: ReturnType<typeof decodeReplayResponse>;
        try {
          r = decodeReplayResponse(frames);
        } catch (err) {
          this.on.badFrame(err as Error);
          continue;
        }
        if (r.seq === null) {
          this.on.end();
          break;
        }
        if (++count > this.opts.maxReplayBatches)
          throw new Error(`replay exceeded ${this.opts.maxReplayBatches} batches`);
        this.on.message(r.seq, r.payload);
        // a long answer is read in one chain of promise continuations otherwise, holding the
        // event loop (requests, the other streams) until its last batch is in
        if ((count & 255) === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } catch (err) {
      if (this.closed) return;
      this.log.warn(
        { event: "subscriber.replay_failed", ...this.ctx(), fromSeq, received: count, err },
        "replay failed",
      );
      this.on.failed(fromSeq, err as Error, count);
    } finally {
      if (this.dealer === dealer) this.dealer = null;
      dealer.close();
      if (!this.closed) this.on.settled();
    }
  }
}
