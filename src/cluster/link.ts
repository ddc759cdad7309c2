/**
 * A gateway replica's link to the others over NATS: heartbeats with its whole own load, a delta
 * per load change (routed, first byte, end), and the others' load kept in RemoteLoads. When NATS
 * is down the replica routes on its own view (the peers expire), reconnects with backoff, and
 * the first heartbeat after the reconnect shares its whole load again.
 */
import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import type { Registry } from "prom-client";
import type { LoadListener, LoadTracker } from "../routing/load.ts";
import type { Logger } from "../util/log.ts";
import { wallClockMs } from "../util/wall-clock.ts";
import {
  decodeLoad,
  encodeJson,
  type LoadMessage,
  loadSubject,
  PROTOCOL_VERSION,
  parseEnvelope,
  validClusterName,
} from "./messages.ts";
import { ClusterMetrics } from "./metrics.ts";
import { type PeerInfo, REMOTE_LOAD_DEFAULTS, RemoteLoads } from "./remote-load.ts";

export interface ClusterOptions {
  /** NATS server URL(s), comma-separated: nats://host:4222 */
  url: string;
  /** cluster name: the replicas sharing load (one subject token) */
  name: string;
  /** this replica's id (default: hostname + random suffix) */
  id?: string;
  /** heartbeat period (ms) */
  heartbeatMs?: number;
  /** a peer silent for this long is gone, with its load (ms) */
  peerTimeoutMs?: number;
  maxPeers?: number;
  maxStreamsPerPeer?: number;
  /** largest message accepted on the cluster subjects (bytes) */
  maxMessageBytes?: number;
  /** longest wait between reconnect attempts (ms; the backoff doubles from 100 ms) */
  reconnectMaxMs?: number;
}

export const CLUSTER_DEFAULTS = Object.freeze({
  name: "default",
  heartbeatMs: 250,
  peerTimeoutMs: REMOTE_LOAD_DEFAULTS.peerTimeoutMs,
  maxMessageBytes: 1024 * 1024,
  reconnectMaxMs: 5_000,
});

export interface ClusterStatus {
  id: string;
  name: string;
  connected: boolean;
  peers: PeerInfo[];
}

export class ClusterLink implements LoadListener {
  readonly id: string;
  readonly name: string;
  readonly remote: RemoteLoads;
  readonly metrics: ClusterMetrics;
  private nc: NatsConnection | null = null;
  private up = false;
  private closed = false;
  private seq = 0;
  private attempts = 0;
  private readonly subject: string;
  private readonly o: Required<Omit<ClusterOptions, "id">>;
  private hbTimer: NodeJS.Timeout | null = null;
  private sweepTimer: NodeJS.Timeout | null = null;
  private connecting: Promise<void> | null = null;
  private readonly upWaiters = new Set<() => void>();
  private readonly onUp: Array<(nc: NatsConnection) => void> = [];

  constructor(
    opts: ClusterOptions,
    private readonly loads: Pick<LoadTracker, "snapshot">,
    registry: Registry,
    private readonly log: Logger,
  ) {
    if (!validClusterName(opts.name))
      throw new Error(`cluster name ${JSON.stringify(opts.name)}: letters, digits, - and _ only (1-64)`);
    this.o = {
      ...CLUSTER_DEFAULTS,
      maxPeers: REMOTE_LOAD_DEFAULTS.maxPeers,
      maxStreamsPerPeer: REMOTE_LOAD_DEFAULTS.maxStreamsPerPeer,
      ...Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)),
    } as Required<Omit<ClusterOptions, "id">>;
    this.id = opts.id ?? `${hostname()}-${randomUUID().slice(0, 8)}`;
    this.name = opts.name;
    this.subject = loadSubject(opts.name);
    this.remote = new RemoteLoads({
      peerTimeoutMs: this.o.peerTimeoutMs,
      maxPeers: this.o.maxPeers,
      maxStreamsPerPeer: this.o.maxStreamsPerPeer,
    });
    this.metrics = new ClusterMetrics(registry);
    this.metrics.peers.set(0);
    this.metrics.connected.set(0);
  }

  /** Connect in the background (the gateway never waits for NATS to route). */
  start(): void {
    if (this.closed || this.connecting !== null) return;
    this.connecting = this.connectLoop();
    const sweepMs = Math.max(20, Math.min(100, Math.floor(this.o.peerTimeoutMs / 10)));
    this.sweepTimer = setInterval(() => this.sweep(), sweepMs);
    this.sweepTimer.unref();
    this.hbTimer = setInterval(() => this.heartbeat(), this.o.heartbeatMs);
    this.hbTimer.unref();
  }

  get connected(): boolean {
    return this.up;
  }

  /** Run `f` with the connection now (if up) and after every (re)connect. */
  whenUp(f: (nc: NatsConnection) => void): void {
    this.onUp.push(f);
    if (this.up && this.nc !== null) f(this.nc);
  }

  /** The connection once up, or null after `timeoutMs`. */
  async connection(timeoutMs: number): Promise<NatsConnection | null> {
    if (this.up) return this.nc;
    if (this.closed) return null;
    await new Promise<void>((resolve) => {
      const t = setTimeout(done, timeoutMs);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.upWaiters.add(done);
    });
    return this.up ? this.nc : null;
  }

  status(): ClusterStatus {
    return {
      id: this.id,
      name: this.name,
      connected: this.up,
      peers: this.remote.peerInfo(performance.now()),
    };
  }

  loadDelta(streamId: string, requests: number, prefillRequests: number, prefillTokens: number): void {
    if (!this.up) return;
    // ts: the peers measure how late a delta reaches them (kvsync_cluster_delta_delay_seconds)
    this.publish({
      t: "d",
      s: streamId,
      r: requests,
      pr: prefillRequests,
      pt: prefillTokens,
      ts: wallClockMs(),
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.hbTimer) clearInterval(this.hbTimer);
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    for (const w of this.upWaiters) w();
    const nc = this.nc;
    if (nc !== null && this.up) {
      this.publish({ t: "bye" });
      await nc.drain().catch(() => nc.close());
    } else await nc?.close().catch(() => undefined);
    this.up = false;
    this.metrics.connected.set(0);
    this.remote.clear();
  }

  private publish(body: { t: LoadMessage["t"] } & Record<string, unknown>): void {
    const nc = this.nc;
    if (nc === null) return;
    try {
      nc.publish(
        this.subject,
        encodeJson({ v: PROTOCOL_VERSION, c: this.name, id: this.id, seq: this.seq++, ...body }),
      );
      this.metrics.published.inc({ type: body.t });
    } catch (err) {
      // the connection is closing or reconnecting: the next heartbeat carries the state
      this.log.debug({ event: "cluster.publish_failed", err: String(err) }, "publish failed");
    }
  }

  private heartbeat(): void {
    if (!this.up) return;
    const streams = this.loads
      .snapshot()
      .slice(0, this.o.maxStreamsPerPeer)
      .map((s) => [s.streamId, s.requests, s.prefillRequests, s.prefillTokens]);
    this.publish({ t: "hb", streams });
  }

  private sweep(): void {
    const gone = this.remote.expire(performance.now());
    for (const id of gone) {
      this.metrics.peerExpiries.inc();
      this.log.info({ event: "cluster.peer_expired", peer: id }, "peer silent: its load is dropped");
    }
    this.metrics.peers.set(this.remote.peerCount());
    this.metrics.remoteInflight.set(this.remote.totalRequests());
  }

  private onMessage(data: Uint8Array): void {
    const env = parseEnvelope(data, this.name, this.o.maxMessageBytes);
    const d = env.ok ? decodeLoad(env.msg, this.o.maxStreamsPerPeer) : env;
    if (!d.ok) {
      this.metrics.dropped.inc({ reason: d.reason });
      this.log.debug({ event: "cluster.message_dropped", reason: d.reason, detail: d.detail }, "dropped");
      return;
    }
    const m = d.msg;
    if (m.id === this.id) return;
    const r = this.remote.apply(m, performance.now());
    if (r === "peer_cap" || r === "stream_cap" || r === "stale") this.metrics.dropped.inc({ reason: r });
    else this.metrics.received.inc({ type: m.t });
    if (m.t === "d" && m.ts !== undefined)
      this.metrics.deltaDelaySeconds.observe(Math.max(0, wallClockMs() - m.ts) / 1000);
    if (m.t === "bye") this.log.info({ event: "cluster.peer_left", peer: m.id }, "peer left");
  }

  private async connectLoop(): Promise<void> {
    let delay = 100;
    let loggedDown = false;
    while (!this.closed) {
      try {
        const nc = await connect({
          servers: this.o.url.split(",").map((s) => s.trim()),
          name: `kvsync-gateway-${this.id}`,
          noEcho: true,
          maxReconnectAttempts: -1,
          reconnectDelayHandler: () => {
            // exponential backoff with jitter between reconnect attempts
            const base = Math.min(this.o.reconnectMaxMs, 100 * 2 ** Math.min(this.attempts++, 10));
            return base / 2 + Math.random() * (base / 2);
          },
          pingInterval: 5_000,
          maxPingOut: 2,
          timeout: 2_000,
        });
        if (this.closed) {
          await nc.close();
          return;
        }
        this.nc = nc;
        nc.subscribe(this.subject, {
          callback: (err, msg) => {
            if (err === null) this.onMessage(msg.data);
          },
        });
        this.markUp(nc, loggedDown);
        loggedDown = false;
        delay = 100;
        // follow the connection until it closes for good (the client reconnects on its own)
        for await (const s of nc.status()) {
          if (s.type === "disconnect") this.markDown("disconnect");
          else if (s.type === "reconnect") {
            this.attempts = 0;
            this.markUp(nc, true);
          }
        }
        await nc.closed();
        if (this.closed) return;
        this.markDown("closed");
        loggedDown = true;
      } catch (err) {
        if (this.closed) return;
        if (!loggedDown) {
          loggedDown = true;
          this.metrics.outages.inc({ cause: "connect" });
          this.log.warn(
            { event: "cluster.nats_down", url: this.o.url, err: String(err) },
            "NATS unreachable: routing on this replica's own load view until it is back",
          );
        }
      }
      this.nc = null;
      await new Promise((r) => setTimeout(r, delay / 2 + Math.random() * (delay / 2)).unref());
      delay = Math.min(this.o.reconnectMaxMs, delay * 2);
    }
  }

  private markUp(nc: NatsConnection, wasDown: boolean): void {
    if (this.up) return;
    this.up = true;
    this.metrics.connected.set(1);
    this.log.info(
      {
        event: wasDown ? "cluster.nats_up" : "cluster.connected",
        url: this.o.url,
        id: this.id,
        cluster: this.name,
      },
      wasDown ? "NATS back: sharing load again" : "cluster link up",
    );
    // the whole own load at once: what the peers missed meanwhile
    this.heartbeat();
    for (const w of this.upWaiters) w();
    this.upWaiters.clear();
    for (const f of this.onUp) f(nc);
  }

  private markDown(cause: string): void {
    if (!this.up) return;
    this.up = false;
    this.metrics.connected.set(0);
    this.metrics.outages.inc({ cause });
    this.log.warn(
      { event: "cluster.nats_down", url: this.o.url, cause },
      "NATS connection lost: routing on this replica's own load view until it is back",
    );
  }
}
