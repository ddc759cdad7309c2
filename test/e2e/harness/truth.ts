import { getJson } from "./http.ts";
import { scaled, waitFor } from "./wait.ts";

/** `GET /debug/kv-cache` of an engine and `GET /admin/pods/<name>/blocks` of the gateway. */
export interface BlocksDoc {
  blocks: Array<{ hash: string; tiers: string[] }>;
  /** a hybrid model's other KV-cache groups (engine: its sliding-window group; index: groups.ts) */
  groups?: Array<{ group: number; hashes: string[] }>;
}

/** Differences of the other KV-cache groups' hashes, one line per differing group. */
export function diffGroups(index: BlocksDoc, truth: BlocksDoc): string[] {
  const byGroup = (d: BlocksDoc) =>
    new Map((d.groups ?? []).map((g) => [g.group, new Set(g.hashes.map(String))]));
  const i = byGroup(index);
  const t = byGroup(truth);
  const out: string[] = [];
  for (const g of new Set([...i.keys(), ...t.keys()])) {
    const ih = i.get(g) ?? new Set<string>();
    const th = t.get(g) ?? new Set<string>();
    const missing = [...th].filter((h) => !ih.has(h)).length;
    const stale = [...ih].filter((h) => !th.has(h)).length;
    if (missing + stale > 0)
      out.push(`group ${g}: index ${ih.size} engine ${th.size} (missing ${missing}; stale ${stale})`);
  }
  return out;
}

export interface BlockDiff {
  indexCount: number;
  truthCount: number;
  /** in the engine, not in the index */
  missing: string[];
  /** in the index, not in the engine (stale) */
  extra: string[];
  /** held by both with different tiers */
  tierMismatch: string[];
}

function toMap(doc: BlocksDoc, what: string): Map<string, string> {
  if (!doc || !Array.isArray(doc.blocks))
    throw new Error(`${what}: no "blocks" array in ${JSON.stringify(doc).slice(0, 200)}`);
  const m = new Map<string, string>();
  for (const b of doc.blocks) m.set(String(b.hash), [...b.tiers].sort().join(","));
  return m;
}

export function diffBlocks(index: BlocksDoc, truth: BlocksDoc): BlockDiff {
  const i = toMap(index, "index");
  const t = toMap(truth, "engine truth");
  const d: BlockDiff = { indexCount: i.size, truthCount: t.size, missing: [], extra: [], tierMismatch: [] };
  for (const [h, tiers] of t) {
    const it = i.get(h);
    if (it === undefined) d.missing.push(h);
    else if (it !== tiers) d.tierMismatch.push(`${h}: index ${it} engine ${tiers}`);
  }
  for (const h of i.keys()) if (!t.has(h)) d.extra.push(h);
  return d;
}

export function diffIsEmpty(d: BlockDiff): boolean {
  return d.missing.length === 0 && d.extra.length === 0 && d.tierMismatch.length === 0;
}

export function describeDiff(pod: string, d: BlockDiff): string {
  const ex = (a: string[]) => (a.length ? ` e.g. ${a.slice(0, 2).join(", ")}` : "");
  return (
    `index of pod ${pod} has ${d.indexCount} blocks, engine truth has ${d.truthCount} ` +
    `(missing ${d.missing.length}${ex(d.missing)}; stale ${d.extra.length}${ex(d.extra)}; ` +
    `tier mismatches ${d.tierMismatch.length}${ex(d.tierMismatch)})`
  );
}

export interface TruthSource {
  /** pod name as the gateway knows it ("<namespace>/<pod>") */
  name: string;
  /** engine base URL, e.g. http://198.18.4.2:8000 */
  http: string;
}

export interface IndexReader {
  podBlocks(name: string): Promise<BlocksDoc>;
}

/** Compare one pod; true when equal, else a description of the difference. */
export async function compareWithTruth(gw: IndexReader, pod: TruthSource): Promise<true | string> {
  // truth first: anything the engine stores after this read can only add to the index,
  // so a stale entry reported here is real, not a race with the read
  const truth = await getJson<BlocksDoc>(`${pod.http}/debug/kv-cache`);
  const index = await gw.podBlocks(pod.name);
  const d = diffBlocks(index, truth);
  const g = diffGroups(index, truth);
  if (diffIsEmpty(d) && g.length === 0) return true;
  return diffIsEmpty(d) ? `pod ${pod.name}: ${g.join("; ")}` : describeDiff(pod.name, d);
}

/** Compare every pod; true when all are equal, else the differing pods. */
export async function compareAllWithTruth(gw: IndexReader, pods: TruthSource[]): Promise<true | string> {
  const bad: string[] = [];
  const CONC = 8;
  for (let i = 0; i < pods.length; i += CONC) {
    const res = await Promise.all(pods.slice(i, i + CONC).map((p) => compareWithTruth(gw, p)));
    for (const r of res) if (r !== true) bad.push(r);
  }
  if (bad.length === 0) return true;
  return `${bad.length}/${pods.length} pods differ: ${bad.slice(0, 3).join("; ")}${bad.length > 3 ? "; ..." : ""}`;
}

/** Wait until the gateway's index equals the engine truth of every pod (returns ms taken). */
export function waitIndexMatchesTruth(
  gw: IndexReader,
  pods: TruthSource[],
  timeoutMs = 20_000,
): Promise<number> {
  return waitFor(`index == engine truth for ${pods.length} pod(s)`, () => compareAllWithTruth(gw, pods), {
    timeoutMs: scaled(timeoutMs),
    intervalMs: 100,
  });
}
