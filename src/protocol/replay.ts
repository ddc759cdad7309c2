/**
 * vLLM's replay protocol (DEALER client ↔ engine ROUTER), frames as seen by the DEALER / as handed
 * to the ROUTER after its routing-id frame:
 *   request:  ["", seq]
 *   response: ["", seq, payload]            (before vLLM PR #45177, July 2026)
 *             ["", topic, seq, payload]     (after it)
 *   end:      seq = ff ff ff ff ff ff ff ff with an empty payload; in the topic layout the topic
 *             frame of the end marker is EMPTY.
 */
import { ProtocolError } from "./errors.ts";
import { decodeSeq, encodeSeq, toBuffer } from "./frames.ts";

/** The end-marker seq (2^64-1). Not representable as a JS number: it is recognised from bytes. */
export const REPLAY_END_SEQ = 0xffffffffffffffffn;
const END_SEQ_BYTES: Buffer = Buffer.from("ffffffffffffffff", "hex");
const EMPTY: Buffer = Buffer.alloc(0);

/** A copy of the 8 bytes of the end-marker seq. */
export function replayEndSeqBytes(): Buffer {
  return Buffer.from(END_SEQ_BYTES);
}

export function isReplayEndSeq(frame: Uint8Array): boolean {
  if (frame.length !== 8) return false;
  for (let i = 0; i < 8; i++) if (frame[i] !== 0xff) return false;
  return true;
}

export function encodeReplayRequest(seq: number): Buffer[] {
  return [EMPTY, encodeSeq(seq)];
}

/** Parse `["", seq]` (the ROUTER side, after removing the routing-id frame). */
export function decodeReplayRequest(frames: readonly Uint8Array[]): number {
  if (frames.length !== 2) {
    throw new ProtocolError("bad_frame_count", `replay request must have 2 frames, got ${frames.length}`);
  }
  if (frames[0]!.length !== 0)
    throw new ProtocolError("bad_schema", "replay request: delimiter frame not empty");
  return decodeSeq(frames[1]!);
}

/**
 * One replay answer message. `seq` null (or REPLAY_END_SEQ) writes the end marker (its payload
 * should be empty; in the topic layout its topic frame is written empty, as vLLM does).
 * `topic` null selects the old 3-frame layout, a string the 4-frame layout.
 */
export function encodeReplayResponse(
  seq: number | bigint | null,
  payload: Uint8Array,
  topic: string | null,
): Buffer[] {
  const end = seq === null || seq === REPLAY_END_SEQ;
  if (!end && typeof seq !== "number") throw new RangeError(`encodeReplayResponse: bad seq ${seq}`);
  const seqFrame = end ? Buffer.from(END_SEQ_BYTES) : encodeSeq(seq as number);
  const body = toBuffer(payload);
  if (topic === null) return [EMPTY, seqFrame, body];
  return [EMPTY, end ? EMPTY : Buffer.from(topic, "utf8"), seqFrame, body];
}

/** The end marker message in the given layout (`topicLayout` = 4-frame layout). */
export function encodeReplayEnd(topicLayout: boolean): Buffer[] {
  return encodeReplayResponse(null, EMPTY, topicLayout ? "" : null);
}

export interface ReplayResponse {
  /** null = end marker. */
  seq: number | null;
  /** null in the 3-frame layout; the topic frame's text in the 4-frame layout ("" for the end marker). */
  topic: string | null;
  payload: Buffer;
}

/** Parse one replay answer message in either layout. */
export function decodeReplayResponse(frames: readonly Uint8Array[]): ReplayResponse {
  if (frames.length !== 3 && frames.length !== 4) {
    throw new ProtocolError(
      "bad_frame_count",
      `replay response must have 3 or 4 frames, got ${frames.length}`,
    );
  }
  if (frames[0]!.length !== 0)
    throw new ProtocolError("bad_schema", "replay response: delimiter frame not empty");
  const withTopic = frames.length === 4;
  const seqFrame = frames[withTopic ? 2 : 1]!;
  const payload = toBuffer(frames[withTopic ? 3 : 2]!);
  const topic = withTopic ? toBuffer(frames[1]!).toString("utf8") : null;
  if (isReplayEndSeq(seqFrame)) return { seq: null, topic, payload };
  return { seq: decodeSeq(seqFrame), topic, payload };
}
