/**
 * The load-sharing messages replicas exchange on `kvsync.<cluster>.load` (JSON, version 1):
 *
 * - `hb`: a heartbeat with the sender's whole own load (every stream it has work on), which also
 *   corrects whatever deltas were lost;
 * - `d`: one stream's load delta (a request routed, its first byte, its end);
 * - `bye`: the sender is leaving (its load goes at once instead of at expiry).
 *
 * Every message carries the cluster name, the sender's id and a per-sender seq. Anything else on
 * the subject (another version, another cluster, garbage) is rejected with a reason to count.
 */

export const PROTOCOL_VERSION = 1;
/** longest replica id and stream id accepted */
export const MAX_ID_LENGTH = 128;
export const MAX_STREAM_ID_LENGTH = 512;
/** largest load figure accepted (requests, tokens) */
const MAX_FIGURE = 1e9;

/** A cluster name is one NATS subject token: letters, digits, `-` and `_`. */
export function validClusterName(name: string): boolean {
  return /^[A-Za-z0-9_-]{1,64}$/.test(name);
}

export function loadSubject(cluster: string): string {
  return `kvsync.${cluster}.load`;
}

export function snapshotSubject(cluster: string): string {
  return `kvsync.${cluster}.snapshot`;
}

/** [streamId, requests, prefillRequests, prefillTokens] */
export type StreamLoadTuple = [string, number, number, number];

export type LoadMessage =
  | { t: "hb"; id: string; seq: number; streams: StreamLoadTuple[] }
  | { t: "d"; id: string; seq: number; s: string; r: number; pr: number; pt: number; ts?: number }
  | { t: "bye"; id: string; seq: number };

export type DropReason = "malformed" | "version" | "foreign" | "invalid";

export type Decoded<T> = { ok: true; msg: T } | { ok: false; reason: DropReason; detail: string };

const textDecoder = new TextDecoder("utf-8", { fatal: true });

export function encodeJson(o: unknown): Uint8Array {
  return Buffer.from(JSON.stringify(o));
}

/** Parse a JSON object carrying `v` and `c`; the version and cluster checks shared by every message. */
export function parseEnvelope(
  data: Uint8Array,
  cluster: string,
  maxBytes: number,
): Decoded<Record<string, unknown>> {
  if (data.length > maxBytes)
    return { ok: false, reason: "malformed", detail: `${data.length} bytes > ${maxBytes}` };
  let o: unknown;
  try {
    o = JSON.parse(textDecoder.decode(data));
  } catch (err) {
    return { ok: false, reason: "malformed", detail: `not JSON: ${(err as Error).message.slice(0, 80)}` };
  }
  if (o === null || typeof o !== "object" || Array.isArray(o))
    return { ok: false, reason: "malformed", detail: "not an object" };
  const r = o as Record<string, unknown>;
  if (r.v !== PROTOCOL_VERSION) return { ok: false, reason: "version", detail: `version ${String(r.v)}` };
  if (r.c !== cluster) return { ok: false, reason: "foreign", detail: `cluster ${String(r.c).slice(0, 64)}` };
  return { ok: true, msg: r };
}

const isId = (x: unknown, max: number): x is string =>
  typeof x === "string" && x.length > 0 && x.length <= max;
const isCount = (x: unknown): x is number =>
  Number.isInteger(x) && (x as number) >= 0 && (x as number) <= MAX_FIGURE;
const isDelta = (x: unknown): x is number => Number.isInteger(x) && Math.abs(x as number) <= MAX_FIGURE;

function bad(detail: string): Decoded<never> {
  return { ok: false, reason: "invalid", detail };
}

/** Validate a load message (after parseEnvelope); `maxStreams` bounds a heartbeat. */
export function decodeLoad(r: Record<string, unknown>, maxStreams: number): Decoded<LoadMessage> {
  if (!isId(r.id, MAX_ID_LENGTH)) return bad("bad id");
  if (!Number.isSafeInteger(r.seq) || (r.seq as number) < 0) return bad("bad seq");
  const id = r.id;
  const seq = r.seq as number;
  switch (r.t) {
    case "hb": {
      const st = r.streams;
      if (!Array.isArray(st)) return bad("heartbeat without streams");
      if (st.length > maxStreams) return bad(`heartbeat with ${st.length} streams > ${maxStreams}`);
      for (const e of st) {
        if (
          !Array.isArray(e) ||
          e.length !== 4 ||
          !isId(e[0], MAX_STREAM_ID_LENGTH) ||
          !isCount(e[1]) ||
          !isCount(e[2]) ||
          !isCount(e[3])
        )
          return bad("bad heartbeat stream entry");
      }
      return { ok: true, msg: { t: "hb", id, seq, streams: st as StreamLoadTuple[] } };
    }
    case "d":
      if (!isId(r.s, MAX_STREAM_ID_LENGTH) || !isDelta(r.r) || !isDelta(r.pr) || !isDelta(r.pt))
        return bad("bad delta");
      // ts (the sender's wall clock, ms) is optional: a replica without it still shares load
      return {
        ok: true,
        msg: {
          t: "d",
          id,
          seq,
          s: r.s,
          r: r.r,
          pr: r.pr,
          pt: r.pt,
          ...(Number.isFinite(r.ts) ? { ts: r.ts as number } : {}),
        },
      };
    case "bye":
      return { ok: true, msg: { t: "bye", id, seq } };
    default:
      return bad(`unknown type ${String(r.t).slice(0, 32)}`);
  }
}
