import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import fc from "fast-check";
import { Registry } from "prom-client";
import { NatsServer } from "../../../harness/nats-server.ts";
import { ClusterMetrics } from "../../../src/cluster/metrics.ts";
import { fetchSnapshot, SNAPSHOT_DEFAULTS, SnapshotServer } from "../../../src/cluster/snapshot.ts";
import { SyncPrefixIndex } from "../../../src/index/sync-index.ts";
import type { NamespaceRef, PrefixIndex, StreamRef } from "../../../src/index/types.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { batch, hk, removed, stored, stream, toks } from "../index/helpers.ts";

const NS: NamespaceRef = { model: "m", lora: null, blockSize: 4 };

/** What an index says about a stream: its claims and its matches for some prompts. */
function view(ix: PrefixIndex, s: string, prompts: number[][]) {
  const blocks = ix
    .streamBlocks(s)
    .map((b) => `${b.hash}:${b.tiers.join("+")}`)
    .sort();
  return { blocks, matches: prompts.map((p) => ix.match(NS, toks(p))) };
}

/** A stream built from random chains: stores (GPU and CPU), removals, orphans. */
function fill(ix: PrefixIndex, ref: StreamRef, seed: number): number[][] {
  const prompts: number[][] = [];
  fc.assert(
    fc.property(
      fc.array(fc.tuple(fc.integer({ min: 1, max: 6 }), fc.integer({ min: 0, max: 9 })), {
        minLength: 5,
        maxLength: 40,
      }),
      (ops) => {
        let next = 1;
        for (const [len, kind] of ops) {
          const ids = Array.from({ length: len }, () => next++);
          const hashes = ids.map((i) => hk(i + seed * 1000));
          if (kind === 0 && next > 3) ix.applyBatch(ref, batch(removed([hk(next - 3 + seed * 1000)])));
          else if (kind === 1) ix.applyBatch(ref, batch(stored(hashes, hk(999_999), toks(ids))));
          else if (kind === 2) ix.applyBatch(ref, batch(stored(hashes, null, [], { medium: "CPU" })));
          else ix.applyBatch(ref, batch(stored(hashes, null, toks(ids))));
          prompts.push(ids);
        }
      },
    ),
    { seed, numRuns: 1 },
  );
  return prompts;
}

describe("index export / import (a peer's snapshot)", () => {
  it("an imported stream holds and matches exactly what the exporter's did", () => {
    for (let seed = 1; seed <= 20; seed++) {
      const src = new SyncPrefixIndex();
      const ref = stream("pod-a");
      const prompts = fill(src, ref, seed);
      const dst = new SyncPrefixIndex();
      const data = src.exportStream("pod-a");
      assert.ok(data);
      assert.equal(dst.importStream(ref, data), data.hashes.length);
      assert.deepEqual(view(dst, "pod-a", prompts), view(src, "pod-a", prompts), `seed ${seed}`);
      // and later events apply the same on both (the chain continues from imported blocks)
      const more = batch(stored([hk(seed * 1000 + 500)], hk(seed * 1000 + 1), toks([77])));
      src.applyBatch(ref, more);
      dst.applyBatch(ref, more);
      assert.deepEqual(view(dst, "pod-a", [...prompts, [1, 77]]), view(src, "pod-a", [...prompts, [1, 77]]));
    }
  });

  it("malformed entries are skipped and counted, never thrown", () => {
    const dst = new SyncPrefixIndex();
    const n = dst.importStream(stream("p"), {
      namespaces: [],
      hashes: [hk(1), hk(1), "", hk(3)],
      meta: [1, 1, 1, 0],
      keys: [0, 0, 0, 0, 0, 0, 0, 0],
    });
    assert.equal(n, 1);
    assert.equal(dst.stats().invalidEvents, 3);
  });
});

describe("snapshot over a real nats-server", { timeout: 60_000 }, () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  before(async () => {
    nats = await NatsServer.start();
    nc = await connect({ servers: nats.url });
  });
  after(async () => {
    await nc?.close();
    await nats?.stop();
  });
  const me = { name: "t", id: "new" };

  it("no peer: no_peer at once", async () => {
    const r = await fetchSnapshot(nc, me, { ...SNAPSHOT_DEFAULTS, timeoutMs: 2_000 });
    assert.equal(r.result, "no_peer");
  });

  it("a peer's streams arrive in several chunks, with their points, and load into an index", async () => {
    const src = new SyncPrefixIndex();
    const refs = [stream("pod-a"), stream("pod-b#1", "m", "pod-b", 1)];
    const prompts = refs.map((r, i) => fill(src, r, 40 + i));
    const registry = new Registry();
    const metrics = new ClusterMetrics(registry);
    const peerNc = await connect({ servers: nats.url });
    const server = new SnapshotServer(
      { name: "t", id: "peer", whenUp: (f) => f(peerNc) },
      {
        streams: () => refs,
        take: (ref) => {
          const i = refs.indexOf(ref);
          const data = src.exportStream(ref.streamId);
          return data === null ? null : { ref, point: { seq: 100 + i, fp: -5 + i, len: 7 }, data };
        },
      },
      metrics,
      silentLogger(),
      { ...SNAPSHOT_DEFAULTS, chunkBytes: 1024 },
    );
    server.start(10);
    try {
      let r = await fetchSnapshot(nc, me);
      await waitFor("the peer joined the queue group", async () => {
        r = await fetchSnapshot(nc, me);
        return r.result === "loaded" || r.result;
      });
      assert.equal(r.result, "loaded");
      if (r.result !== "loaded") return;
      assert.equal(r.from, "peer");
      assert.ok(r.chunks > 2, `${r.chunks} chunks`);
      assert.deepEqual(
        r.streams.map((s) => [s.ref, s.point]),
        refs.map((ref, i) => [ref, { seq: 100 + i, fp: -5 + i, len: 7 }]),
      );
      const dst = new SyncPrefixIndex();
      for (const s of r.streams) dst.importStream(s.ref, s.data);
      for (const [i, ref] of refs.entries())
        assert.deepEqual(view(dst, ref.streamId, prompts[i]), view(src, ref.streamId, prompts[i]));
      // the server counts after its own flush resolves, which can come after our last chunk arrived
      await waitFor("the served snapshot counted", async () =>
        (await registry.metrics()).includes('kvsync_cluster_snapshots_served_total{result="ok"} 1'),
      );
    } finally {
      server.stop();
      await peerNc.close();
    }
  });

  it("streams are taken one per event-loop turn while events apply, each matching its own point", async () => {
    // every stream holds BASE fixed blocks plus a sliding window: the batch at seq k stores
    // block k and removes block k - WINDOW, so the entries at any seq are known exactly
    const STREAMS = 60;
    const BASE = 150;
    const WINDOW = 20;
    const block = (s: number, k: number) => hk(s * 1_000_000 + k);
    const src = new SyncPrefixIndex();
    const refs = Array.from({ length: STREAMS }, (_, s) => stream(`pod-${s}`));
    const seqs = new Array<number>(STREAMS).fill(0);
    for (const [s, ref] of refs.entries()) {
      const base = Array.from({ length: BASE }, (_, j) => block(s, 500_000 + j));
      src.applyBatch(ref, batch(stored(base, null, toks(base.map((_, j) => j + 1)))));
    }
    const applyNext = (s: number) => {
      const k = ++seqs[s];
      const events: Parameters<typeof batch> = [stored([block(s, k)], null, toks([k + 7]))];
      if (k > WINDOW) events.push(removed([block(s, k - WINDOW)]));
      src.applyBatch(refs[s], batch(...events));
    };
    const expected = (s: number, k: number) => {
      const out = Array.from({ length: BASE }, (_, j) => block(s, 500_000 + j));
      for (let j = Math.max(1, k - WINDOW + 1); j <= k; j++) out.push(block(s, j));
      return out.sort();
    };
    // the event application the serving replica goes on with: batches on the streams in turn,
    // PER_TURN every event-loop turn. More than one per turn keeps the applier out of lockstep
    // with the export's one stream per turn (in lockstep every take would see the same seq)
    const PER_TURN = 5;
    let applying = true;
    let applied = 0;
    let turn = 0;
    const applier = () => {
      if (!applying) return;
      for (let i = 0; i < PER_TURN; i++) applyNext(turn++ % STREAMS);
      applied++;
      setImmediate(applier);
    };
    const takes: number[] = [];
    const registry = new Registry();
    const peerNc = await connect({ servers: nats.url });
    const server = new SnapshotServer(
      { name: "t", id: "busy-peer", whenUp: (f) => f(peerNc) },
      {
        streams: () => refs,
        take: (ref) => {
          const s = refs.indexOf(ref);
          takes.push(applied);
          const data = src.exportStream(ref.streamId);
          return data === null ? null : { ref, point: { seq: seqs[s], fp: seqs[s], len: 1 }, data };
        },
      },
      new ClusterMetrics(registry),
      silentLogger(),
      { ...SNAPSHOT_DEFAULTS, chunkBytes: 2048 },
    );
    server.start(10);
    setImmediate(applier);
    try {
      let r = await fetchSnapshot(nc, me);
      await waitFor("the peer joined the queue group", async () => {
        takes.length = 0;
        r = await fetchSnapshot(nc, me);
        return r.result === "loaded" || r.result;
      });
      assert.equal(r.result, "loaded");
      if (r.result !== "loaded") return;
      assert.equal(r.streams.length, STREAMS);
      // events were applied between the first stream's take and the last one's. The export yields
      // after every stream, to the check phase (setImmediate) or, after a flush, to I/O: a take
      // that follows a flush's PONG in the poll phase sees no new check-phase apply, so not every
      // gap holds one, but most must
      assert.equal(takes.length, STREAMS, `takes: ${takes}`);
      const gaps = takes.slice(1).filter((a, i) => a > takes[i]).length;
      assert.ok(gaps >= (STREAMS - 1) / 2, `applied during the export: ${takes}`);
      const dst = new SyncPrefixIndex();
      for (const st of r.streams) {
        const s = refs.findIndex((x) => x.streamId === st.ref.streamId);
        assert.deepEqual(
          [...st.data.hashes].sort(),
          expected(s, st.point.seq),
          `stream ${s} at ${st.point.seq}`,
        );
        dst.importStream(st.ref, st.data);
        assert.deepEqual(
          dst
            .streamBlocks(st.ref.streamId)
            .map((b) => b.hash)
            .sort(),
          expected(s, st.point.seq),
        );
      }
      // the streams were taken at different points of the same run of events
      assert.ok(new Set(r.streams.map((x) => x.point.seq)).size > 1);
    } finally {
      applying = false;
      server.stop();
      await peerNc.close();
    }
  });

  it("a broken answer (garbage, another version) is rejected, not loaded", async () => {
    const peerNc = await connect({ servers: nats.url });
    let n = 0;
    peerNc.subscribe("kvsync.t.snapshot", {
      queue: "snapshot",
      callback: (_e, m) => {
        if (n++ % 2 === 0) m.respond(Buffer.from("{not json"));
        else m.respond(JSON.stringify({ v: 2, c: "t", from: "x", t: "chunk", i: 0, parts: [] }));
        m.respond(new Uint8Array(0));
      },
    });
    await peerNc.flush();
    try {
      const r1 = await fetchSnapshot(nc, me);
      const r2 = await fetchSnapshot(nc, me);
      assert.deepEqual([r1.result, r2.result], ["rejected", "rejected"]);
    } finally {
      await peerNc.close();
    }
  });
});
