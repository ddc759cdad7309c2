/**
 * The other replicas' load as this one knows it: per peer, the in-flight work it sent to each
 * stream (from its heartbeats and deltas), and the sum over peers per stream, which the
 * LoadTracker adds to its own. A peer whose heartbeats stop expires with all its load. Pure:
 * no sockets, the clock is passed in.
 */
import type { RemoteLoad, RemoteLoadSource } from "../routing/load.ts";
import type { LoadMessage } from "./messages.ts";

export interface RemoteLoadOptions {
  /** a peer silent for this long is gone (ms) */
  peerTimeoutMs: number;
  /** most peers followed (a bound: more are counted and ignored) */
  maxPeers: number;
  /** most streams followed per peer */
  maxStreamsPerPeer: number;
}

export const REMOTE_LOAD_DEFAULTS: RemoteLoadOptions = {
  peerTimeoutMs: 1_500,
  maxPeers: 256,
  maxStreamsPerPeer: 20_000,
};

interface Peer {
  lastSeen: number;
  seq: number;
  streams: Map<string, RemoteLoad>;
}

export interface PeerInfo {
  id: string;
  /** ms since its last message */
  silentMs: number;
  streams: number;
  requests: number;
  prefillTokens: number;
}

export type ApplyResult = "ok" | "gap" | "stale" | "peer_cap" | "stream_cap";

export class RemoteLoads implements RemoteLoadSource {
  private readonly peers = new Map<string, Peer>();
  private readonly total = new Map<string, RemoteLoad>();
  private readonly o: RemoteLoadOptions;

  constructor(opts: Partial<RemoteLoadOptions> = {}) {
    this.o = { ...REMOTE_LOAD_DEFAULTS, ...opts };
  }

  remoteLoad(streamId: string): RemoteLoad | undefined {
    return this.total.get(streamId);
  }

  peerCount(): number {
    return this.peers.size;
  }

  /** Sum of the peers' in-flight requests over every stream. */
  totalRequests(): number {
    let n = 0;
    for (const l of this.total.values()) n += l.requests;
    return n;
  }

  apply(m: LoadMessage, now: number): ApplyResult {
    let p = this.peers.get(m.id);
    if (m.t === "bye") {
      if (p !== undefined) this.removePeer(m.id, p);
      return "ok";
    }
    if (p === undefined) {
      if (this.peers.size >= this.o.maxPeers) return "peer_cap";
      p = { lastSeen: now, seq: -1, streams: new Map() };
      this.peers.set(m.id, p);
    } else if (m.seq <= p.seq) {
      // an old message (the sender's seq restarted means a new id, so this is a duplicate)
      return "stale";
    }
    const gap = p.seq >= 0 && m.seq !== p.seq + 1;
    p.lastSeen = now;
    p.seq = m.seq;
    if (m.t === "hb") {
      for (const [sid, l] of p.streams) this.addTotal(sid, -l.requests, -l.prefillRequests, -l.prefillTokens);
      p.streams.clear();
      let capped = false;
      for (const [sid, r, pr, pt] of m.streams) {
        if (r === 0 && pr === 0 && pt === 0) continue;
        if (p.streams.size >= this.o.maxStreamsPerPeer) {
          capped = true;
          break;
        }
        p.streams.set(sid, { requests: r, prefillRequests: pr, prefillTokens: pt });
        this.addTotal(sid, r, pr, pt);
      }
      return capped ? "stream_cap" : "ok";
    }
    let l = p.streams.get(m.s);
    if (l === undefined) {
      if (p.streams.size >= this.o.maxStreamsPerPeer) return "stream_cap";
      l = { requests: 0, prefillRequests: 0, prefillTokens: 0 };
      p.streams.set(m.s, l);
    }
    // clamped at 0: after a lost message the next heartbeat sets the figures right
    const r = Math.max(0, l.requests + m.r) - l.requests;
    const pr = Math.max(0, l.prefillRequests + m.pr) - l.prefillRequests;
    const pt = Math.max(0, l.prefillTokens + m.pt) - l.prefillTokens;
    l.requests += r;
    l.prefillRequests += pr;
    l.prefillTokens += pt;
    if (l.requests === 0 && l.prefillRequests === 0 && l.prefillTokens === 0) p.streams.delete(m.s);
    this.addTotal(m.s, r, pr, pt);
    return gap ? "gap" : "ok";
  }

  /** Drop the peers silent for longer than the timeout; returns their ids. */
  expire(now: number): string[] {
    const gone: string[] = [];
    for (const [id, p] of this.peers) {
      if (now - p.lastSeen > this.o.peerTimeoutMs) {
        this.removePeer(id, p);
        gone.push(id);
      }
    }
    return gone;
  }

  /** Forget every peer (this replica left the cluster). */
  clear(): void {
    this.peers.clear();
    this.total.clear();
  }

  peerInfo(now: number): PeerInfo[] {
    return [...this.peers].map(([id, p]) => {
      let requests = 0;
      let prefillTokens = 0;
      for (const l of p.streams.values()) {
        requests += l.requests;
        prefillTokens += l.prefillTokens;
      }
      return { id, silentMs: Math.round(now - p.lastSeen), streams: p.streams.size, requests, prefillTokens };
    });
  }

  private removePeer(id: string, p: Peer): void {
    for (const [sid, l] of p.streams) this.addTotal(sid, -l.requests, -l.prefillRequests, -l.prefillTokens);
    this.peers.delete(id);
  }

  private addTotal(sid: string, r: number, pr: number, pt: number): void {
    let t = this.total.get(sid);
    if (t === undefined) {
      if (r === 0 && pr === 0 && pt === 0) return;
      t = { requests: 0, prefillRequests: 0, prefillTokens: 0 };
      this.total.set(sid, t);
    }
    t.requests += r;
    t.prefillRequests += pr;
    t.prefillTokens += pt;
    if (t.requests <= 0 && t.prefillRequests <= 0 && t.prefillTokens <= 0) this.total.delete(sid);
  }
}
