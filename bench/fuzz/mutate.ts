/**
 * The soak's malformed material: payload mutations of valid batches and broken framings of PUB
 * messages and replay answers. Payload mutations are classified with the production decoder
 * (`decodeBatch`): a mutation that still decodes is a valid batch as far as any subscriber can
 * tell, so it is counted (same events or different ones) and not sent; only mutations the
 * decoder rejects go on the wire, where a correct subscriber must recover the real batch.
 */
import { Packr } from "msgpackr";
import { decodeBatch } from "../../src/protocol/decode.ts";
import { isProtocolError } from "../../src/protocol/errors.ts";
import { eventToJson } from "../../src/protocol/index.ts";

export const PAYLOAD_KINDS = ["flip", "truncate", "extend", "msgpack", "lenbomb", "splice", "empty"] as const;
export type PayloadKind = (typeof PAYLOAD_KINDS)[number];

export interface PayloadStats {
  generated: number;
  /** rejected by the decoder (sent when a garbage payload was wanted) */
  rejected: number;
  /** decoded as a batch with the original's events (a flip in the timestamp, say) */
  decodedSame: number;
  /** decoded as a valid batch with other events: no subscriber can tell it from a real one */
  decodedDifferent: number;
  /** decoder error codes of the rejected ones */
  codes: Record<string, number>;
}

const packr = new Packr({ useRecords: false, variableMapSize: true });

export class Mutator {
  readonly payloadStats = Object.fromEntries(
    PAYLOAD_KINDS.map((k) => [
      k,
      { generated: 0, rejected: 0, decodedSame: 0, decodedDifferent: 0, codes: {} },
    ]),
  ) as Record<PayloadKind, PayloadStats>;

  constructor(readonly rand: () => number) {}

  int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** One payload mutation of `p` (never modifies `p`). */
  mutate(kind: PayloadKind, p: Buffer): Buffer {
    switch (kind) {
      case "flip": {
        const out = Buffer.from(p);
        const n = 1 + this.int(4);
        for (let i = 0; i < n; i++) out[this.int(out.length)] ^= 1 + this.int(255);
        return out;
      }
      case "truncate":
        return Buffer.from(p.subarray(0, 1 + this.int(Math.max(1, p.length - 1))));
      case "extend":
        return Buffer.concat([p, this.bytes(1 + this.int(16))]);
      case "msgpack":
        return packr.pack(this.rand() < 0.5 ? this.batchShaped() : this.value(0)) as Buffer;
      case "lenbomb": {
        // a container or string header claiming ~4 GB / 4 G elements, inserted anywhere
        const header = Buffer.from([
          this.pick([0xdd, 0xdf, 0xc6, 0xdb]),
          0xff,
          0xff,
          0xff,
          0xf0 | this.int(16),
        ]);
        const at = this.int(p.length + 1);
        return Buffer.concat([p.subarray(0, at), header, p.subarray(at)]);
      }
      case "splice": {
        // a slice of the batch copied over another place: valid msgpack pieces in wrong places
        const a = this.int(p.length);
        const b = this.int(p.length);
        const n = 1 + this.int(Math.min(32, p.length - Math.max(a, b)));
        const out = Buffer.from(p);
        p.copy(out, b, a, a + n);
        return out;
      }
      default:
        return Buffer.alloc(0);
    }
  }

  /**
   * A mutation of `p` the decoder rejects, counting every try in payloadStats; null when 16
   * tries of this kind all decoded (`empty` never does).
   */
  garbage(kind: PayloadKind, p: Buffer): Buffer | null {
    const st = this.payloadStats[kind];
    for (let tries = 0; tries < 16; tries++) {
      const m = this.mutate(kind, p);
      st.generated++;
      const verdict = classify(m, p);
      if (verdict === "same") st.decodedSame++;
      else if (verdict === "different") st.decodedDifferent++;
      else {
        st.rejected++;
        st.codes[verdict.code] = (st.codes[verdict.code] ?? 0) + 1;
        return m;
      }
    }
    return null;
  }

  /** A garbage payload of a random kind (falls back to `empty`, which never decodes). */
  anyGarbage(p: Buffer): { kind: PayloadKind; payload: Buffer } {
    const kind = this.pick(PAYLOAD_KINDS);
    const g = this.garbage(kind, p);
    return g === null ? { kind: "empty", payload: Buffer.alloc(0) } : { kind, payload: g };
  }

  /** Random msgpack value (no bigints: msgpackr would refuse them without options). */
  value(depth: number): unknown {
    const r = this.int(depth > 3 ? 7 : 10);
    switch (r) {
      case 0:
        return null;
      case 1:
        return this.rand() < 0.5;
      case 2:
        return this.int(2 ** 31) - (this.rand() < 0.3 ? 2 ** 30 : 0);
      case 3:
        return Math.floor(this.rand() * 2 ** 53);
      case 4:
        return this.rand() * 1e12 - 5e11;
      case 5:
        return this.pick(["BlockStored", "BlockRemoved", "AllBlocksCleared", "GPU", "CPU", "", "type"]);
      case 6:
        return this.bytes(this.pick([0, 8, 16, 32, 33, 65]));
      case 7:
      case 8:
        return Array.from({ length: this.int(6) }, () => this.value(depth + 1));
      default: {
        const o: Record<string, unknown> = {};
        const n = this.int(5);
        for (let i = 0; i < n; i++)
          o[this.pick(["type", "block_hashes", "token_ids", "medium", "parent_block_hash", "x"])] =
            this.value(depth + 1);
        return o;
      }
    }
  }

  /** `[ts, [events], rank]` with fields of wrong types, counts, or order. */
  private batchShaped(): unknown {
    const events = Array.from({ length: this.int(4) }, () => {
      const tag = this.pick(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"]);
      if (this.rand() < 0.5) return [tag, ...Array.from({ length: this.int(14) }, () => this.value(2))];
      const ev: Record<string, unknown> = { type: tag };
      for (const k of ["block_hashes", "parent_block_hash", "token_ids", "block_size", "medium", "lora_id"])
        if (this.rand() < 0.7) ev[k] = this.value(2);
      return ev;
    });
    const out: unknown[] = [this.rand() < 0.8 ? this.rand() * 2e9 : this.value(2), events];
    if (this.rand() < 0.7) out.push(this.rand() < 0.5 ? null : this.value(2));
    return out;
  }

  // --- framing --------------------------------------------------------------------------

  /** A PUB message of 1, 2, 4 or 5 frames built from real pieces. */
  badFrameCount(topic: Buffer, seq: Buffer, payload: Buffer): Buffer[] {
    const n = this.pick([1, 2, 4, 5]);
    const pieces = [topic, seq, payload, this.bytes(this.int(9)), seq];
    return pieces.slice(0, n);
  }

  /** A seq frame of any length but 8. */
  badSeqLength(): Buffer {
    let n = this.int(17);
    if (n === 8) n = 0;
    return this.bytes(n);
  }

  /**
   * 8 bytes whose value is above 2^53-1; now and then all ones (the replay end marker) when
   * `endMarker` allows it (in a replay answer that is a real end marker, not garbage).
   */
  hugeSeq(endMarker = true): Buffer {
    if (endMarker && this.rand() < 0.2) return Buffer.alloc(8, 0xff);
    const b = this.bytes(8);
    b[1] |= 0x20;
    return b;
  }

  /** A topic no engine sends: empty, long, or bytes that are not UTF-8. */
  oddTopic(): Buffer {
    switch (this.int(4)) {
      case 0:
        return Buffer.alloc(0);
      case 1:
        return Buffer.alloc(200 + this.int(4000), 0x41 + this.int(26));
      case 2:
        return Buffer.from([0xff, 0xfe, 0xc0, 0x80, ...this.bytes(this.int(16))]);
      default:
        return this.bytes(1 + this.int(64));
    }
  }
}

/** "same" / "different" when `m` decodes (compared with the original `p`), else the decoder's error. */
export function classify(m: Buffer, p: Buffer): "same" | "different" | { code: string } {
  let events: string;
  try {
    events = JSON.stringify(decodeBatch(m).batch.events.map(eventToJson));
  } catch (err) {
    // the decoder promises ProtocolError only: anything else is a finding of its own
    if (!isProtocolError(err)) return { code: `NOT_A_PROTOCOL_ERROR:${(err as Error).name}` };
    return { code: err.code === "limit_exceeded" ? `limit_exceeded:${err.limit}` : err.code };
  }
  const original = JSON.stringify(decodeBatch(p).batch.events.map(eventToJson));
  return events === original ? "same" : "different";
}
