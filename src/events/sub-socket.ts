/**
 * The transport of one event stream: a ZeroMQ SUB on the engine's PUB endpoint that notices a
 * dead connection and never stays dead.
 *
 * - ZMTP heartbeats (PING every `heartbeatIntervalMs`, the connection is dropped when nothing
 *   comes back within `heartbeatTimeoutMs`): libzmq answers PINGs in its I/O thread, so a
 *   partitioned or SIGSTOPped engine goes silent and its stream goes down within seconds instead
 *   of staying `live` until TCP gives up.
 * - Connect attempts time out (`connectTimeoutMs`) and handshakes too, and the reconnect interval
 *   is capped low (`reconnectMaxMs`): after a partition the stream is back within about a second.
 * - libzmq ends a session for good on a ZMTP protocol error (a garbled greeting or frame) instead
 *   of reconnecting. The monitor tells: a protocol handshake error, or a disconnect not followed
 *   by a reconnect attempt (libzmq schedules one right away when it means to). Either replaces
 *   the socket after a jittered, capped backoff; so does a socket that shows no connection
 *   attempt for `watchdogMs` while down, and a receive loop that throws.
 * - A TCP connection whose ZMTP handshake neither completes nor fails within the handshake
 *   timeout (+ 1 s) is replaced too: a greeting whose first byte is garbled reads to libzmq as an
 *   unversioned ZMTP 1.0 peer announcing a long identity, and libzmq waits for that identity
 *   with no handshake timeout, no handshake event and no heartbeats, delivering nothing, for as
 *   long as the peer keeps the connection open.
 * - "up" means a completed ZMTP handshake (a TCP connect alone proves nothing: a stopped engine's
 *   kernel still accepts connections) or, before the socket's first disconnect, a received
 *   message (its handshake event may trail it). After a disconnect only a handshake counts:
 *   messages libzmq decoded before the session ended stay queued and are still delivered, and
 *   taking one of them for a new connection would leave a dead socket `up` for good (the watchdog
 *   and the heartbeat only act on a socket that is down or has a session).
 */
import * as zmq from "zeromq";
import "../protocol/zmq-context.ts";
import { backoffDelay, jitter } from "../util/backoff.ts";
import type { Logger } from "../util/log.ts";
import { retryOnEintr } from "./eintr.ts";
import type { DownCause } from "./event-source.ts";

export interface SubSocketOptions {
  reconnectMs: number;
  reconnectMaxMs: number;
  receiveHighWaterMark: number;
  /** 0 disables heartbeats */
  heartbeatIntervalMs: number;
  heartbeatTimeoutMs: number;
  connectTimeoutMs: number;
  /** a down socket with no reconnect attempt for this long is replaced */
  watchdogMs: number;
  /** after a disconnect, how long to wait for libzmq's reconnect attempt before replacing */
  retryGraceMs: number;
  /**
   * Largest frame libzmq accepts (bytes): a larger one ends the session at once. A garbled
   * length field would otherwise make libzmq allocate that much and swallow the stream into one
   * frame until the heartbeat times out.
   */
  maxFrameBytes: number;
}

export interface SubSocketHandlers {
  up(): void;
  down(cause: DownCause, silentMs: number): void;
  /** a returned promise: receive nothing more until it settles (back-pressure) */
  frames(frames: Buffer[]): Promise<void> | undefined;
  /** the socket is being replaced (its session ended for good or its loop failed) */
  replaced?(cause: DownCause, delayMs: number): void;
}

export class SubSocket {
  private sub: zmq.Subscriber | null = null;
  private connected = false;
  private closed = false;
  private attempt = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  private watchdog: NodeJS.Timeout | null = null;
  /** last sign of libzmq trying to (re)connect, or of the connection itself */
  private lastAttemptAt = performance.now();
  /** set on a disconnect until libzmq shows a reconnect attempt */
  private awaitingRetrySince = 0;
  /** a TCP connection is up and its ZMTP handshake has not ended yet (either way) */
  private handshakeSince = 0;
  private lastTrafficAt = performance.now();
  /** the current socket's session ended and no new handshake completed yet */
  private sessionEnded = false;
  private readonly loops = new Set<Promise<void>>();
  /** sockets replaced so far */
  replacements = 0;
  /** socket calls retried after an EINTR (eintr.ts) */
  eintrRetries = 0;

  constructor(
    private readonly endpoint: string,
    private readonly topic: string,
    private readonly opts: SubSocketOptions,
    private readonly on: SubSocketHandlers,
    private readonly log: Logger,
    private readonly ctx: () => Record<string, unknown>,
  ) {}

  isConnected(): boolean {
    return this.connected;
  }

  start(): void {
    this.open();
    const every = Math.max(20, Math.floor(Math.min(this.opts.watchdogMs, this.opts.retryGraceMs) / 4));
    this.watchdog = setInterval(() => this.check(), every);
    this.watchdog.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.connected = false;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    if (this.watchdog) clearInterval(this.watchdog);
    this.retryTimer = null;
    this.watchdog = null;
    this.sub?.close();
    this.sub = null;
    await Promise.allSettled([...this.loops]);
  }

  private open(): void {
    if (this.closed) return;
    const o = this.opts;
    const hb =
      o.heartbeatIntervalMs > 0
        ? {
            heartbeatInterval: o.heartbeatIntervalMs,
            heartbeatTimeout: o.heartbeatTimeoutMs,
            // the engine drops us too when our PINGs stop (deciseconds on the wire, > 0)
            heartbeatTimeToLive: Math.max(100, Math.ceil(o.heartbeatTimeoutMs / 100) * 100),
            handshakeInterval: o.heartbeatTimeoutMs,
          }
        : {};
    const onEintr = (attempt: number) => {
      this.eintrRetries++;
      this.log.debug(
        { event: "subscriber.eintr_retry", ...this.ctx(), attempt },
        "socket call interrupted: again",
      );
    };
    // the monitor (`events`) is made here, not at its first use: its zmq_socket_monitor and
    // connect can fail with EINTR (src/events/eintr.ts), and a socket without it is closed
    const sub = retryOnEintr(() => {
      const s = new zmq.Subscriber({
        linger: 0,
        reconnectInterval: jitter(o.reconnectMs * 2),
        reconnectMaxInterval: o.reconnectMaxMs,
        receiveHighWaterMark: o.receiveHighWaterMark,
        connectTimeout: o.connectTimeoutMs,
        maxMessageSize: o.maxFrameBytes,
        ...hb,
      });
      try {
        void s.events;
      } catch (err) {
        s.close();
        throw err;
      }
      return s;
    }, onEintr);
    this.sub = sub;
    this.lastAttemptAt = performance.now();
    this.awaitingRetrySince = 0;
    this.handshakeSince = 0;
    this.sessionEnded = false;
    const attempting = () => {
      if (this.sub !== sub) return;
      this.lastAttemptAt = performance.now();
      this.awaitingRetrySince = 0;
    };
    const handshakeOver = () => {
      if (this.sub === sub) this.handshakeSince = 0;
    };
    sub.events.on("connect", () => {
      attempting();
      if (this.sub === sub) this.handshakeSince = performance.now();
    });
    sub.events.on("connect:delay", attempting);
    sub.events.on("connect:retry", attempting);
    sub.events.on("handshake", () => {
      attempting();
      handshakeOver();
      if (this.sub === sub) this.sessionEnded = false;
      this.markUp(sub);
    });
    sub.events.on("handshake:error:protocol", (ev) => {
      handshakeOver();
      if (this.sub !== sub || this.closed) return;
      this.log.warn(
        { event: "subscriber.protocol_error", ...this.ctx(), err: ev.error?.message },
        "ZMTP protocol error: libzmq ends the session, replacing the socket",
      );
      this.replace(sub, "protocol_error");
    });
    sub.events.on("handshake:error:other", () => {
      attempting();
      handshakeOver();
    });
    sub.events.on("disconnect", () => {
      handshakeOver();
      if (this.sub !== sub || this.closed) return;
      // the session's end is the last sign of it: libzmq gets the grace to retry from here
      this.lastAttemptAt = this.awaitingRetrySince = performance.now();
      this.sessionEnded = true;
      if (!this.connected) return;
      this.connected = false;
      const silentMs = performance.now() - this.lastTrafficAt;
      const stalled = o.heartbeatIntervalMs > 0 && silentMs >= o.heartbeatTimeoutMs;
      this.on.down(stalled ? "stalled" : "closed", silentMs);
    });
    try {
      sub.subscribe(this.topic);
      retryOnEintr(() => sub.connect(this.endpoint), onEintr);
    } catch (err) {
      this.log.error({ event: "subscriber.connect_error", ...this.ctx(), err }, "cannot connect");
      this.replace(sub, "socket_error");
      return;
    }
    this.track(this.receiveLoop(sub));
  }

  private markUp(sub: zmq.Subscriber): void {
    if (this.closed || this.sub !== sub || this.connected) return;
    this.attempt = 0;
    this.connected = true;
    this.lastTrafficAt = performance.now();
    this.on.up();
  }

  /** Watchdog tick: replace a socket whose session ended without a reconnect in sight. */
  private check(): void {
    const sub = this.sub;
    if (this.closed || sub === null || this.connected) return;
    const now = performance.now();
    const handshakeLimitMs = this.opts.heartbeatIntervalMs > 0 ? this.opts.heartbeatTimeoutMs + 1000 : 0;
    if (handshakeLimitMs > 0 && this.handshakeSince > 0 && now - this.handshakeSince >= handshakeLimitMs) {
      this.log.warn(
        { event: "subscriber.handshake_stuck", ...this.ctx(), waitedMs: now - this.handshakeSince },
        "connected but the ZMTP handshake never ended (a garbled greeting?): replacing the socket",
      );
      this.replace(sub, "handshake_stuck");
    } else if (this.awaitingRetrySince > 0 && now - this.awaitingRetrySince >= this.opts.retryGraceMs) {
      this.log.warn(
        { event: "subscriber.session_ended", ...this.ctx(), graceMs: this.opts.retryGraceMs },
        "disconnected without a reconnect attempt (protocol error?): replacing the socket",
      );
      this.replace(sub, "protocol_error");
    } else if (now - this.lastAttemptAt >= this.opts.watchdogMs) {
      this.log.warn(
        { event: "subscriber.watchdog", ...this.ctx(), idleMs: now - this.lastAttemptAt },
        "down with no reconnect attempt: replacing the socket",
      );
      this.replace(sub, "watchdog");
    }
  }

  /** Close `sub` and open a new one after a jittered, capped backoff. */
  private replace(sub: zmq.Subscriber, cause: DownCause): void {
    if (this.sub !== sub) return;
    this.sub = null;
    this.awaitingRetrySince = 0;
    try {
      sub.close();
    } catch {
      // already closed
    }
    if (this.connected) {
      this.connected = false;
      this.on.down(cause, performance.now() - this.lastTrafficAt);
    }
    if (this.closed) return;
    this.replacements++;
    const delay = backoffDelay(this.attempt++, this.opts.reconnectMs, this.opts.reconnectMaxMs);
    this.log.info(
      { event: "subscriber.socket_replaced", ...this.ctx(), cause, delayMs: delay },
      "replacing the SUB socket",
    );
    this.on.replaced?.(cause, delay);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.open();
    }, delay);
  }

  private track(p: Promise<void>): void {
    this.loops.add(p);
    p.finally(() => this.loops.delete(p));
  }

  private async receiveLoop(sub: zmq.Subscriber): Promise<void> {
    try {
      for await (const frames of sub) {
        if (this.closed || this.sub !== sub) return;
        this.lastTrafficAt = performance.now();
        // a message proves the first connection even if its handshake event is late; after a
        // disconnect it may be a leftover of the ended session
        if (!this.connected && !this.sessionEnded) this.markUp(sub);
        const wait = this.on.frames(frames);
        // paused: libzmq queues up to the high-water mark meanwhile, then the engine drops
        if (wait !== undefined) await wait;
      }
    } catch (err) {
      if (this.closed || this.sub !== sub) return;
      this.log.error({ event: "subscriber.socket_error", ...this.ctx(), err }, "SUB socket failed");
      this.replace(sub, "socket_error");
    }
  }
}
