/**
 * `GET /admin/live`: the admin dashboard's feed, server-sent events.
 *
 *   on connect  `hello` {intervalMs, routing}, `fleet` {t, rows} (every row), and with a gateway
 *               `routing` {series, decisions} (the last points and decisions)
 *   every tick  `fleet-delta` {t, upsert, remove} (rows changed since the last tick; empty ones
 *               are the heartbeat; a stream's state change sends one at once), and with a gateway
 *               `routing-tick` {points} (closed seconds)
 *   as made     `decisions` [record, ...] (flushed every `decisionFlushMs`; a record comes again,
 *               under the same id, when a retry sent its request elsewhere)
 *
 * One tick serves every client: rows are computed and serialized once. Each client's unsent
 * bytes are bounded (`maxBufferedBytes`): a client that reads slower than the feed is dropped
 * (its EventSource reconnects and starts over from a full snapshot); at most `maxClients` at once.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { Counter, Gauge, type Registry } from "prom-client";
import type { DecisionRecord, RouteActivity } from "../gateway/activity.ts";
import { GatewayError } from "../gateway/errors.ts";
import type { Logger } from "../util/log.ts";
import type { FleetView } from "./fleet-view.ts";
import type { AdminRouteHandler } from "./types.ts";

export interface LiveOptions {
  intervalMs: number;
  decisionFlushMs: number;
  maxClients: number;
  maxBufferedBytes: number;
  /** decisions held between flushes (the oldest go first) */
  maxPendingDecisions: number;
  /** a stream's state change is sent this soon (ms), ahead of the tick */
  pokeDelayMs: number;
}

export const LIVE_DEFAULTS: LiveOptions = {
  intervalMs: 1000,
  decisionFlushMs: 250,
  maxClients: 32,
  maxBufferedBytes: 1024 * 1024,
  maxPendingDecisions: 50,
  pokeDelayMs: 50,
};

interface Client {
  res: ServerResponse;
  remote: string;
}

function metricOf<T>(registry: Registry, name: string, make: () => T): T {
  return (registry.getSingleMetric(name) as T | undefined) ?? make();
}

export class LiveFeed {
  private readonly o: LiveOptions;
  private readonly clients = new Set<Client>();
  private tickTimer: NodeJS.Timeout | null = null;
  private flushTimer: NodeJS.Timeout | null = null;
  private pending: DecisionRecord[] = [];
  private poked: NodeJS.Timeout | null = null;
  private lastSent = -1;
  private unsubscribe: (() => void) | null = null;
  private readonly connected: Gauge;
  private readonly dropped: Counter;

  constructor(
    private readonly view: FleetView,
    private readonly activity: RouteActivity | null,
    registry: Registry,
    private readonly log: Logger,
    opts: Partial<LiveOptions> = {},
  ) {
    this.o = { ...LIVE_DEFAULTS, ...opts };
    this.connected = metricOf(
      registry,
      "kvsync_admin_live_clients",
      () =>
        new Gauge({
          name: "kvsync_admin_live_clients",
          help: "dashboard clients connected to the admin API's live feed",
          registers: [registry],
        }),
    );
    this.dropped = metricOf(
      registry,
      "kvsync_admin_live_clients_dropped_total",
      () =>
        new Counter({
          name: "kvsync_admin_live_clients_dropped_total",
          help: "live-feed clients dropped because they read slower than the feed (unsent bytes over the bound)",
          registers: [registry],
        }),
    );
  }

  readonly handler: AdminRouteHandler = (req, res) => {
    if (req.method !== "GET")
      throw new GatewayError(405, "invalid_request_error", "method_not_allowed", "use GET");
    if (this.clients.size >= this.o.maxClients)
      throw new GatewayError(
        503,
        "server_error",
        "too_many_clients",
        `the live feed serves at most ${this.o.maxClients} clients`,
      );
    this.attach(req, res);
  };

  private attach(req: IncomingMessage, res: ServerResponse): void {
    req.resume();
    // the snapshot is built before the headers go out: a failure is still an error response
    this.start();
    let first = `retry: 1000\n\n${frame("hello", { intervalMs: this.o.intervalMs, routing: this.activity !== null })}`;
    first += frame("fleet", { t: Date.now(), rows: this.view.rows() });
    if (this.activity)
      first += frame("routing", { series: this.activity.series(), decisions: this.activity.recent() });
    res.writeHead(200, {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
    });
    const c: Client = { res, remote: `${req.socket.remoteAddress}:${req.socket.remotePort}` };
    this.clients.add(c);
    this.connected.set(this.clients.size);
    res.once("close", () => this.detach(c));
    this.send(c, first);
  }

  private detach(c: Client): void {
    if (!this.clients.delete(c)) return;
    this.connected.set(this.clients.size);
    if (this.clients.size === 0) this.stop();
  }

  private start(): void {
    if (this.tickTimer !== null || this.clients.size > 0) return;
    // the first tick sets the rates' baseline and fills the rows the snapshot sends
    this.view.tick();
    if (this.activity) {
      this.lastSent = this.activity.series().at(-1)?.t ?? -1;
      this.unsubscribe = this.activity.onDecision((d) => {
        // a retried decision comes again, updated: it goes out once, as it is at the flush
        if (this.pending.includes(d)) return;
        this.pending.push(d);
        if (this.pending.length > this.o.maxPendingDecisions) this.pending.shift();
      });
      this.flushTimer = setInterval(() => this.flush(), this.o.decisionFlushMs);
      this.flushTimer.unref();
    }
    this.tickTimer = setInterval(() => this.tick(), this.o.intervalMs);
    this.tickTimer.unref();
  }

  /**
   * Something changed that operators watch for (a stream's state): send a delta in `pokeDelayMs`
   * instead of at the next tick. Pokes in between coalesce.
   */
  poke(): void {
    if (this.tickTimer === null || this.poked !== null) return;
    this.poked = setTimeout(() => {
      this.poked = null;
      this.tick();
    }, this.o.pokeDelayMs);
    this.poked.unref();
  }

  private stop(): void {
    if (this.poked) clearTimeout(this.poked);
    this.poked = null;
    if (this.tickTimer) clearInterval(this.tickTimer);
    if (this.flushTimer) clearInterval(this.flushTimer);
    this.tickTimer = null;
    this.flushTimer = null;
    this.unsubscribe?.();
    this.unsubscribe = null;
    this.pending = [];
  }

  private tick(): void {
    try {
      const d = this.view.tick();
      let msg = frame("fleet-delta", { t: Date.now(), upsert: d.upsert, remove: d.remove });
      if (this.activity) {
        const points = this.activity.series(this.lastSent);
        if (points.length > 0) {
          this.lastSent = points.at(-1)!.t;
          msg += frame("routing-tick", { points });
        }
      }
      this.broadcast(msg);
    } catch (err) {
      this.log.error({ event: "admin.live_tick_failed", err: String(err) }, "live feed tick failed");
    }
  }

  private flush(): void {
    if (this.pending.length === 0) return;
    const msg = frame("decisions", this.pending);
    this.pending = [];
    this.broadcast(msg);
  }

  private broadcast(msg: string): void {
    for (const c of [...this.clients]) this.send(c, msg);
  }

  /** Write to one client; a client whose unsent bytes pass the bound is dropped. */
  private send(c: Client, msg: string): void {
    if (c.res.destroyed) {
      this.detach(c);
      return;
    }
    c.res.write(msg);
    if (c.res.writableLength <= this.o.maxBufferedBytes) return;
    this.dropped.inc();
    this.log.warn(
      {
        event: "admin.live_client_dropped",
        remote: c.remote,
        bufferedBytes: c.res.writableLength,
        maxBufferedBytes: this.o.maxBufferedBytes,
      },
      "live-feed client reads slower than the feed: dropped (it reconnects to a fresh snapshot)",
    );
    this.detach(c);
    c.res.destroy();
  }
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
