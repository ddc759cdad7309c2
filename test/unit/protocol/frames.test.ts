/** Framing: seq encoding, PUB message frames, replay request/response layouts and their errors. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  decodePubMessage,
  decodeReplayRequest,
  decodeReplayResponse,
  decodeSeq,
  encodePubMessage,
  encodeReplayEnd,
  encodeReplayRequest,
  encodeReplayResponse,
  encodeSeq,
  isReplayEndSeq,
  ProtocolError,
  REPLAY_END_SEQ,
  replayEndSeqBytes,
} from "../../../src/protocol/index.ts";

const code = (c: string, limit?: string) => (e: unknown) =>
  e instanceof ProtocolError && e.code === c && (limit === undefined || e.limit === limit);

test("seq: 8-byte big-endian", () => {
  assert.equal(encodeSeq(0).toString("hex"), "0000000000000000");
  assert.equal(encodeSeq(0x0102030405).toString("hex"), "0000000102030405");
  assert.equal(encodeSeq(Number.MAX_SAFE_INTEGER).toString("hex"), "001fffffffffffff");
  assert.equal(decodeSeq(Buffer.from("001fffffffffffff", "hex")), Number.MAX_SAFE_INTEGER);
  assert.throws(() => encodeSeq(-1), RangeError);
  assert.throws(() => encodeSeq(2 ** 53), RangeError);
  fc.assert(fc.property(fc.maxSafeNat(), (n) => decodeSeq(encodeSeq(n)) === n));
});

test("seq: any length other than 8 is bad_seq_length; > 2^53-1 is bad_schema", () => {
  for (const len of [0, 1, 4, 7, 9, 16]) {
    assert.throws(() => decodeSeq(Buffer.alloc(len)), code("bad_seq_length"), `len ${len}`);
  }
  assert.throws(() => decodeSeq(Buffer.from("0020000000000000", "hex")), code("bad_schema"));
  assert.throws(() => decodeSeq(replayEndSeqBytes()), code("bad_schema"));
});

test("PUB message: [topic, seq, payload]; wrong frame count / seq length are typed errors", () => {
  const payload = Buffer.from([0x92, 0x01, 0x90]);
  const frames = encodePubMessage("kv-events", 7, payload);
  assert.deepEqual(
    frames.map((f) => f.toString("hex")),
    ["6b762d6576656e7473", "0000000000000007", "920190"],
  );
  const m = decodePubMessage(frames);
  assert.equal(m.topic, "kv-events");
  assert.equal(m.seq, 7);
  assert.deepEqual(Buffer.from(m.payload), payload);
  assert.equal(decodePubMessage(encodePubMessage("", 0, new Uint8Array([1]))).topic, "");
  assert.throws(() => decodePubMessage(frames.slice(0, 2)), code("bad_frame_count"));
  assert.throws(() => decodePubMessage([...frames, Buffer.alloc(0)]), code("bad_frame_count"));
  assert.throws(() => decodePubMessage([frames[0]!, Buffer.alloc(4), frames[2]!]), code("bad_seq_length"));
});

test("replay request: ['', seq]", () => {
  const req = encodeReplayRequest(3);
  assert.deepEqual(
    req.map((f) => f.toString("hex")),
    ["", "0000000000000003"],
  );
  assert.equal(decodeReplayRequest(req), 3);
  assert.throws(() => decodeReplayRequest([req[1]!]), code("bad_frame_count"));
  assert.throws(() => decodeReplayRequest([Buffer.from("x"), req[1]!]), code("bad_schema"));
  assert.throws(() => decodeReplayRequest([req[0]!, Buffer.alloc(3)]), code("bad_seq_length"));
});

test("replay response: both layouts and the end marker (empty topic frame in the topic layout)", () => {
  const p = Buffer.from("c0", "hex");
  const old = encodeReplayResponse(5, p, null);
  assert.deepEqual(
    old.map((f) => f.toString("hex")),
    ["", "0000000000000005", "c0"],
  );
  assert.deepEqual(decodeReplayResponse(old), { seq: 5, topic: null, payload: p });
  const neu = encodeReplayResponse(5, p, "t");
  assert.deepEqual(
    neu.map((f) => f.toString("hex")),
    ["", "74", "0000000000000005", "c0"],
  );
  assert.deepEqual(decodeReplayResponse(neu), { seq: 5, topic: "t", payload: p });

  const endOld = encodeReplayResponse(null, Buffer.alloc(0), null);
  assert.deepEqual(
    endOld.map((f) => f.toString("hex")),
    ["", "ffffffffffffffff", ""],
  );
  const endNew = encodeReplayResponse(REPLAY_END_SEQ, Buffer.alloc(0), "t");
  assert.deepEqual(
    endNew.map((f) => f.toString("hex")),
    ["", "", "ffffffffffffffff", ""],
  );
  assert.deepEqual(encodeReplayEnd(true), endNew);
  assert.deepEqual(encodeReplayEnd(false), endOld);
  assert.deepEqual(decodeReplayResponse(endOld), { seq: null, topic: null, payload: Buffer.alloc(0) });
  assert.deepEqual(decodeReplayResponse(endNew), { seq: null, topic: "", payload: Buffer.alloc(0) });
  assert.ok(isReplayEndSeq(replayEndSeqBytes()) && !isReplayEndSeq(encodeSeq(1)));

  assert.throws(() => decodeReplayResponse(old.slice(0, 2)), code("bad_frame_count"));
  assert.throws(() => decodeReplayResponse([...neu, p]), code("bad_frame_count"));
  assert.throws(() => decodeReplayResponse([Buffer.from("x"), old[1]!, p]), code("bad_schema"));
  assert.throws(() => decodeReplayResponse([old[0]!, Buffer.alloc(7), p]), code("bad_seq_length"));
  assert.throws(
    () => decodeReplayResponse([old[0]!, Buffer.from("t"), Buffer.alloc(9), p]),
    code("bad_seq_length"),
  );
});
