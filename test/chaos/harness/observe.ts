import { readFileSync, statSync } from "node:fs";
import { getJson } from "../../e2e/harness/http.ts";
import type { BlocksDoc, TruthSource } from "../../e2e/harness/truth.ts";

/** What the gateway says about itself: its JSON log lines and its Prometheus metrics. */

export interface LogLine {
  time: number;
  level: number;
  event?: string;
  [k: string]: unknown;
}

/**
 * Where the log file ends now (bytes): an experiment's lines are those appended between its
 * start's mark and its end's. Lines are attributed by when they reached the file, not by their
 * `time`: a gateway whose clock was skewed stamps lines 30 s ahead, which a timestamp filter
 * would hand to whichever experiment runs next.
 */
export function logMark(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

/** Every whole JSON log line of `file` in the byte range [from, to) (to: the file's end). */
export function readLog(file: string, from = 0, to = Number.POSITIVE_INFINITY): LogLine[] {
  let buf: Buffer;
  try {
    buf = readFileSync(file);
  } catch {
    return [];
  }
  // a line cut by a concurrent write belongs to the range its end reaches: only whole lines count
  const end = Math.min(buf.length, to);
  const out: LogLine[] = [];
  let start = from;
  while (start < end) {
    const nl = buf.indexOf(10, start);
    if (nl === -1 || nl >= end) break;
    const line = buf.toString("utf8", start, nl);
    start = nl + 1;
    if (!line.startsWith("{")) continue;
    try {
      const l = JSON.parse(line) as LogLine;
      if (typeof l.time === "number") out.push(l);
    } catch {
      // not a log line (a stray write to the same fd)
    }
  }
  return out;
}

/**
 * A log event matcher: `name`, or `name[field=a|b]` (the field's value one of those). When `pods`
 * is given, a line naming a pod (`pod` field) must name one of them.
 */
export function matches(l: LogLine, matcher: string, pods?: Set<string>): boolean {
  const m = matcher.match(/^([\w.]+)(?:\[(\w+)=([^\]]*)\])?$/);
  if (!m || l.event !== m[1]) return false;
  if (m[2] && !m[3].split("|").includes(String(l[m[2]]))) return false;
  if (pods && pods.size > 0 && typeof l.pod === "string" && !pods.has(l.pod)) return false;
  return true;
}

/** First line matching each of `matchers` in the byte range [from, to) of the log (absent when never). */
export function firstEvents(
  file: string,
  range: { from: number; to?: number },
  matchers: string[],
  pods?: Set<string>,
): Map<string, LogLine> {
  const found = new Map<string, LogLine>();
  for (const l of readLog(file, range.from, range.to)) {
    for (const m of matchers) if (!found.has(m) && matches(l, m, pods)) found.set(m, l);
  }
  return found;
}

/** Warn and error lines in the byte range [from, to) of the log, counted by event name. */
export function warningsIn(file: string, range: { from: number; to?: number }): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of readLog(file, range.from, range.to))
    if (l.level >= 40) out[l.event ?? "(no event)"] = (out[l.event ?? "(no event)"] ?? 0) + 1;
  return out;
}

/** Prometheus text → sum of each metric name's samples (labels folded). */
export function metricSums(text: string): Map<string, number> {
  const sums = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m) continue;
    const v = Number(m[3]);
    if (!Number.isFinite(v)) continue;
    sums.set(m[1], (sums.get(m[1]) ?? 0) + v);
  }
  return sums;
}

/** Samples of one metric whose label set contains `labelFilter` (e.g. `reason="stall"`). */
export function metricSum(text: string, name: string, labelFilter?: string): number {
  let sum = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!m || m[1] !== name) continue;
    if (labelFilter && !(m[2] ?? "").includes(labelFilter)) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) sum += v;
  }
  return sum;
}

/**
 * Index vs truth while requests still flow: the engine is read before and after the index, so a
 * block stored or evicted during the reads is not taken for a difference. An index entry the
 * engine held at neither read is stale; a block the engine held at both reads and the index
 * lacks is missing.
 */
export async function looseCompare(
  gw: { podBlocks(name: string): Promise<BlocksDoc> },
  pods: TruthSource[],
): Promise<true | string> {
  const bad: string[] = [];
  for (const p of pods) {
    const t1 = await getJson<BlocksDoc>(`${p.http}/debug/kv-cache`, 3000);
    const idx = await gw.podBlocks(p.name);
    const t2 = await getJson<BlocksDoc>(`${p.http}/debug/kv-cache`, 3000);
    const key = (b: { hash: string; tiers: string[] }) => `${b.hash}@${[...b.tiers].sort().join(",")}`;
    const a = new Set(t1.blocks.map(key));
    const b = new Set(t2.blocks.map(key));
    const i = new Set(idx.blocks.map(key));
    let stale = 0;
    let missing = 0;
    for (const k of i) if (!a.has(k) && !b.has(k)) stale++;
    for (const k of a) if (b.has(k) && !i.has(k)) missing++;
    if (stale || missing) bad.push(`${p.name}: ${stale} stale, ${missing} missing of ${b.size}`);
  }
  return bad.length ? bad.join("; ") : true;
}
