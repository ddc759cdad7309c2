import { performance } from "node:perf_hooks";
import type { PrefixIndex, TierCounts } from "../index/types.ts";
import type { AdminPodEntry } from "./types.ts";

/** One row of the dashboard's fleet table: a stream (or a pod without an events endpoint). */
export interface FleetRow {
  /** the stream id ("<pod>" or "<pod>#<rank>"), or the pod's name when it has no stream */
  id: string;
  pod: string;
  rank: number | null;
  model: string;
  /** adapters the pod serves, comma-separated ("" for none) */
  lora: string;
  /** stream state (live, replaying, down, suspect, connecting, resyncing), "none" without a stream */
  state: string;
  healthy: boolean | null;
  healthReason: string | null;
  lastSeq: number | null;
  /** events applied per second since the previous tick */
  eps: number;
  /** event lag (s), null when not live */
  lag: number | null;
  gaps: number;
  replays: number;
  resyncs: number;
  restarts: number;
  decodeErrors: number;
  blocks: number;
  gpu: number;
  cpu: number;
  storage: number;
  trust: number | null;
}

export interface FleetTick {
  /** every row, sorted by id */
  rows: FleetRow[];
  /** rows new or changed since the previous tick */
  upsert: FleetRow[];
  /** ids gone since the previous tick */
  remove: string[];
}

interface Seen {
  events: number;
  blocks: number;
  tiers: TierCounts;
  json: string;
}

/**
 * The fleet table, recomputed once per tick from the admin API's pod entries: per-stream rates
 * from the counters' differences, blocks per tier from the index (re-counted only for streams
 * whose events or entry count moved: an idle fleet costs no index walk), and the delta against
 * the previous tick so clients get only what changed.
 */
export class FleetView {
  private seen = new Map<string, Seen>();
  private lastAt = -1;
  private current: FleetRow[] = [];

  constructor(
    private readonly entries: () => AdminPodEntry[],
    private readonly index: PrefixIndex,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The rows of the last tick. */
  rows(): FleetRow[] {
    return this.current;
  }

  tick(): FleetTick {
    const at = this.now();
    const dt = this.lastAt < 0 ? 0 : (at - this.lastAt) / 1000;
    this.lastAt = at;
    const next = new Map<string, Seen>();
    const rows: FleetRow[] = [];
    const upsert: FleetRow[] = [];
    for (const e of this.entries()) {
      const id = e.stream ?? e.name;
      if (next.has(id)) continue;
      const prev = this.seen.get(id);
      const tiers = this.tiersOf(e, prev);
      const eps = prev && dt > 0 ? Math.max(0, (e.eventsApplied - prev.events) / dt) : 0;
      const row: FleetRow = {
        id,
        pod: e.name,
        rank: e.rank,
        model: e.model,
        lora: e.lora.join(","),
        // a live stream whose claims keep proving wrong shows as suspect (its trust says how much)
        state: e.suspect && e.state === "live" ? "suspect" : (e.state ?? "none"),
        healthy: e.healthy,
        healthReason: e.healthReason,
        lastSeq: e.lastSeq,
        eps: Math.round(eps * 10) / 10,
        lag: e.lagSeconds === null ? null : Math.round(e.lagSeconds * 1000) / 1000,
        gaps: e.gaps,
        replays: e.replays,
        resyncs: e.resyncs,
        restarts: e.restarts,
        decodeErrors: e.decodeErrors,
        blocks: e.blocks,
        gpu: tiers.GPU,
        cpu: tiers.CPU,
        storage: tiers.STORAGE,
        trust: e.trust === null ? null : Math.round(e.trust * 100) / 100,
      };
      const json = JSON.stringify(row);
      if (prev?.json !== json) upsert.push(row);
      next.set(id, { events: e.eventsApplied, blocks: e.blocks, tiers, json });
      rows.push(row);
    }
    const remove: string[] = [];
    for (const id of this.seen.keys()) if (!next.has(id)) remove.push(id);
    this.seen = next;
    rows.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    this.current = rows;
    return { rows, upsert, remove };
  }

  private tiersOf(e: AdminPodEntry, prev: Seen | undefined): TierCounts {
    if (prev && prev.events === e.eventsApplied && prev.blocks === e.blocks) return prev.tiers;
    const out: TierCounts = { GPU: 0, CPU: 0, STORAGE: 0 };
    if (e.stream === null) return out;
    if (this.index.streamTierCounts) return this.index.streamTierCounts(e.stream, out);
    for (const c of this.index.streamBlocks(e.stream)) {
      for (const t of c.tiers) out[t]++;
    }
    return out;
  }
}
