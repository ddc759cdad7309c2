/**
 * The scale benchmark's fleet processes (bench/scale.bench.ts): `procs` publisher children
 * (scale-publisher.ts), each hosting an equal slice of the pods, their engines files merged into
 * one, their stats summed.
 */
import { type ChildProcess, fork } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface PubStats {
  t: number;
  sentEvents: number;
  sentBatches: number;
  dropped: number;
  behindMs: number;
  eventsPerSec: number;
  cpuCores: number;
  /** CPU seconds since the child started */
  cpuSec: number;
  rssBytes: number;
}

/**
 * The fleet: `PUB_PROCS` publisher children, each hosting an equal slice of the pods (one core
 * cannot encode and send 200k block events/s over 1,000 sockets while the gateway runs), their
 * engines files merged into one; stats summed over the children.
 */
export interface FleetOptions {
  root: string;
  /** where the engines files go */
  dir: string;
  pods: number;
  procs: number;
  blocksPerPod: number;
  batchMs: number;
  model: string;
  /** the children started are added here (the bench kills them on exit) */
  children: ChildProcess[];
}

export async function startPublishers(o: FleetOptions): Promise<{
  send: (m: Record<string, unknown>) => void;
  enginesFile: string;
  stats: () => PubStats;
}> {
  const enginesFile = join(o.dir, "engines.json");
  const per = Math.ceil(o.pods / o.procs);
  const slices: Array<{ child: ChildProcess; file: string; last: PubStats | null }> = [];
  for (let from = 0; from < o.pods; from += per) {
    const file = join(o.dir, `engines-${from}.json`);
    const child = fork(join(o.root, "bench", "scale-publisher.ts"), [], {
      execArgv: ["--import", "tsx"],
      env: {
        ...process.env,
        SCALE_POD_FROM: String(from),
        SCALE_PODS: String(Math.min(per, o.pods - from)),
        SCALE_PODS_TOTAL: String(o.pods),
        SCALE_BLOCKS_PER_POD: String(o.blocksPerPod),
        SCALE_ENGINES_FILE: file,
        SCALE_BATCH_MS: String(o.batchMs),
        SCALE_MODEL: o.model,
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    o.children.push(child);
    slices.push({ child, file, last: null });
  }
  await Promise.all(
    slices.map(
      (s) =>
        new Promise<void>((resolve, reject) => {
          s.child.on("message", (m: { ready?: boolean; stats?: PubStats }) => {
            if (m.ready === true) resolve();
            if (m.stats !== undefined) s.last = m.stats;
          });
          s.child.once("exit", (code) => reject(new Error(`publisher exited with ${code}`)));
        }),
    ),
  );
  const engines = slices.flatMap(
    (s) => (JSON.parse(readFileSync(s.file, "utf8")) as { engines: unknown[] }).engines,
  );
  writeFileSync(enginesFile, JSON.stringify({ engines }));
  return {
    send: (m) => {
      for (const s of slices) s.child.send(m);
    },
    enginesFile,
    stats: () => {
      const all = slices.map((s) => s.last);
      if (all.some((x) => x === null)) throw new Error("no publisher stats yet");
      const st = all as PubStats[];
      const sum = (f: (x: PubStats) => number) => st.reduce((a, x) => a + f(x), 0);
      return {
        t: Math.max(...st.map((x) => x.t)),
        sentEvents: sum((x) => x.sentEvents),
        sentBatches: sum((x) => x.sentBatches),
        dropped: sum((x) => x.dropped),
        behindMs: Math.max(...st.map((x) => x.behindMs)),
        eventsPerSec: sum((x) => x.eventsPerSec),
        cpuCores: sum((x) => x.cpuCores),
        cpuSec: sum((x) => x.cpuSec),
        rssBytes: sum((x) => x.rssBytes),
      };
    },
  };
}
