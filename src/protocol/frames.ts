/** ZeroMQ framing of vLLM's PUB messages: `[topic, seq (8-byte big-endian), payload]`. */
import { ProtocolError } from "./errors.ts";
import type { PubMessage } from "./types.ts";

const TWO32 = 0x1_0000_0000;

/** seq (non-negative safe integer) → 8-byte big-endian Buffer. */
export function encodeSeq(n: number): Buffer {
  if (!Number.isSafeInteger(n) || n < 0)
    throw new RangeError(`encodeSeq: not a non-negative safe integer: ${n}`);
  const b = Buffer.allocUnsafe(8);
  b.writeUInt32BE(Math.floor(n / TWO32), 0);
  b.writeUInt32BE(n % TWO32, 4);
  return b;
}

/**
 * 8-byte big-endian seq → number. Any other length: ProtocolError("bad_seq_length"). A value above
 * 2^53-1 cannot be represented exactly and is rejected as "bad_schema" (a counter starting at 0
 * never gets there; the replay end marker is recognised separately, see replay.ts).
 */
export function decodeSeq(buf: Uint8Array): number {
  if (buf.length !== 8)
    throw new ProtocolError("bad_seq_length", `seq frame must be 8 bytes, got ${buf.length}`);
  const hi = ((buf[0]! << 24) | (buf[1]! << 16) | (buf[2]! << 8) | buf[3]!) >>> 0;
  const lo = ((buf[4]! << 24) | (buf[5]! << 16) | (buf[6]! << 8) | buf[7]!) >>> 0;
  if (hi >= 0x200000) throw new ProtocolError("bad_schema", "seq exceeds 2^53-1");
  return hi * TWO32 + lo;
}

export function toBuffer(u8: Uint8Array): Buffer {
  return Buffer.isBuffer(u8) ? u8 : Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength);
}

/** Frames of one PUB message. The payload is not copied. */
export function encodePubMessage(topic: string, seq: number, payload: Uint8Array): Buffer[] {
  return [Buffer.from(topic, "utf8"), encodeSeq(seq), toBuffer(payload)];
}

/** Parse one received PUB message (exactly 3 frames). The payload is not copied. */
export function decodePubMessage(frames: readonly Uint8Array[]): PubMessage {
  if (frames.length !== 3) {
    throw new ProtocolError("bad_frame_count", `PUB message must have 3 frames, got ${frames.length}`);
  }
  const topic = toBuffer(frames[0]!).toString("utf8");
  const seq = decodeSeq(frames[1]!);
  return { topic, seq, payload: frames[2]! };
}
