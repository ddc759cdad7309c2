/**
 * The top self-time functions of a V8 CPU profile (`node --cpu-prof`) over its last `lastMs`
 * (the measured phase, not start-up), as a share of the busy samples (idle left out),
 * aggregated by function and source position; paths shortened to the repository or package.
 */
import { readFileSync } from "node:fs";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  endTime: number;
}

export function cpuProfileTop(
  file: string,
  n: number,
  lastMs: number,
): { busyShare: number; top: Array<{ pct: number; fn: string; at: string }> } {
  const prof = JSON.parse(readFileSync(file, "utf8")) as Profile;
  const nodes = new Map(prof.nodes.map((x) => [x.id, x]));
  const times = new Array<number>(prof.samples.length);
  let t = prof.endTime;
  // timeDeltas[i] is the gap before sample i: walk back from the end
  for (let i = prof.samples.length - 1; i >= 0; i--) {
    times[i] = t;
    t -= prof.timeDeltas[i] ?? 0;
  }
  const from = prof.endTime - lastMs * 1000;
  const byKey = new Map<string, { fn: string; at: string; hits: number }>();
  let busy = 0;
  let all = 0;
  for (let i = 0; i < prof.samples.length; i++) {
    if (times[i] < from) continue;
    all++;
    const node = nodes.get(prof.samples[i]);
    if (node === undefined || node.callFrame.functionName === "(idle)") continue;
    busy++;
    const { functionName, url, lineNumber } = node.callFrame;
    const fn = functionName === "" ? "(anonymous)" : functionName;
    const at = url === "" ? "" : `${shorten(url)}:${lineNumber + 1}`;
    const key = `${fn}@${at}`;
    const e = byKey.get(key) ?? { fn, at, hits: 0 };
    e.hits++;
    byKey.set(key, e);
  }
  const top = [...byKey.values()]
    .sort((a, b) => b.hits - a.hits)
    .slice(0, n)
    .map((e) => ({ pct: Math.round((e.hits / Math.max(1, busy)) * 1000) / 10, fn: e.fn, at: e.at }));
  return { busyShare: Math.round((busy / Math.max(1, all)) * 1000) / 1000, top };
}

function shorten(url: string): string {
  const s = url.replace(/^file:\/\//, "");
  const nm = s.lastIndexOf("node_modules/");
  if (nm !== -1) return s.slice(nm + "node_modules/".length);
  const src = s.search(/\/(src|bench|test)\//);
  return src === -1 ? s : s.slice(src + 1);
}
