/**
 * The admin API (as `kvsync index` serves it: no routing) over a synthetic fleet of n streams:
 * a stand-in subscriber manager with a mix of states and counters, and a real index holding a few
 * blocks per stream on GPU and CPU. `churn(true)` moves every stream's counters five times a
 * second, so every row of the dashboard changes at every tick.
 */
import { createServer } from "node:http";
import { Registry } from "prom-client";
import { createAdminHandler } from "../../src/admin/admin.ts";
import type { PodInfo } from "../../src/discovery/types.ts";
import type { StreamStatus, SubscriberManagerLike } from "../../src/events/types.ts";
import { createIndex } from "../../src/index/index.ts";
import { blockStored } from "../../src/protocol/build.ts";
import { hashFromInt } from "../../src/protocol/hash.ts";
import type { BlockStored } from "../../src/protocol/types.ts";
import { closeServer, httpUrl, listen } from "../../src/util/http-server.ts";

export interface SyntheticAdmin {
  url: string;
  statuses: StreamStatus[];
  churn(on: boolean): void;
  /** the stream with the most gaps */
  mostGaps(): string;
  count(state: string): number;
  close(): Promise<void>;
}

const MODEL = "Qwen/Qwen3-0.6B";

function stateOf(i: number): StreamStatus["state"] {
  const k = i % 50;
  return k === 7 ? "down" : k === 13 ? "replaying" : k === 21 ? "suspect" : "live";
}

function stored(hashes: number[], medium: string): BlockStored {
  return blockStored(
    hashes.map((h) => hashFromInt(h)),
    null,
    [],
    16,
    { medium },
  );
}

export async function startSyntheticAdmin(n: number): Promise<SyntheticAdmin> {
  const pods: PodInfo[] = [];
  const statuses: StreamStatus[] = [];
  const index = createIndex();
  for (let i = 0; i < n; i++) {
    const name = `pod-${String(i).padStart(4, "0")}`;
    pods.push({
      name,
      model: MODEL,
      loras: i % 10 === 3 ? ["sql-lora"] : [],
      http: `http://10.0.${i >> 8}.${i & 255}:8000`,
      events: `tcp://10.0.${i >> 8}.${i & 255}:5557`,
      replay: null,
      dataParallelSize: 1,
      ready: true,
    });
    const state = stateOf(i);
    statuses.push({
      streamId: name,
      pod: name,
      rank: null,
      model: MODEL,
      state,
      lastSeq: 1000 + i,
      eventsApplied: 5000 + i,
      decodeErrors: 0,
      gaps: i === 421 ? 99 : (i * 7) % 13,
      replays: i % 5,
      resyncs: 0,
      restarts: 0,
      lagSeconds: state === "live" ? 0.002 + (i % 17) / 1000 : null,
    });
    const ref = { streamId: name, pod: name, rank: null, model: MODEL };
    const base = i * 100;
    index.applyBatch(ref, {
      ts: Date.now() / 1000,
      dpRank: null,
      events: [stored([base + 1, base + 2, base + 3, base + 4], "GPU"), stored([base + 5, base + 6], "CPU")],
    });
  }
  const manager: SubscriberManagerLike & { pods(): PodInfo[] } = {
    setPods: () => undefined,
    statuses: () => statuses.map((s) => ({ ...s })),
    status: (id) => statuses.find((s) => s.streamId === id),
    close: async () => undefined,
    pods: () => pods,
  };
  const admin = createAdminHandler({ index, manager, registry: new Registry() });
  const server = createServer((req, res) => void admin(req, res));
  const port = await listen(server, 0, "127.0.0.1");
  let timer: NodeJS.Timeout | null = null;
  return {
    url: httpUrl("127.0.0.1", port),
    statuses,
    churn(on) {
      if (timer) clearInterval(timer);
      timer = null;
      if (!on) return;
      timer = setInterval(() => {
        for (const s of statuses) {
          if (s.state !== "live") continue;
          s.eventsApplied += 7;
          s.lastSeq = (s.lastSeq ?? 0) + 1;
        }
      }, 200);
    },
    mostGaps: () => "pod-0421",
    count: (state) => statuses.filter((s) => s.state === state).length,
    close: async () => {
      if (timer) clearInterval(timer);
      await closeServer(server);
    },
  };
}
