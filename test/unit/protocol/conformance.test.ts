/** Every captured vLLM frame decodes to its `expected`, re-encodes byte for byte, and replays. */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  batchToJson,
  decodeBatch,
  decodePubMessage,
  decodeReplayResponse,
  encodeBatch,
  encodePubMessage,
  encodeReplayEnd,
  encodeReplayRequest,
  encodeReplayResponse,
  hashFromText,
  hashToText,
} from "../../../src/protocol/index.ts";
import { loadConformance } from "./conformance-data.ts";
import { referenceDecode } from "./reference-decoder.ts";

const files = loadConformance();

test("all six conformance files are present", () => {
  assert.equal(files.length, 6);
  assert.deepEqual([...new Set(files.map((f) => f.era))].sort(), [
    "2025-04",
    "2025-09",
    "2026-05",
    "2026-07",
  ]);
});

for (const c of files) {
  describe(`${c.file} (era ${c.era})`, () => {
    test("live PUB messages decode to `expected` (seq, topic, ts, events, dp rank)", () => {
      assert.equal(c.live.length, c.expected.length);
      c.live.forEach((frames, i) => {
        const msg = decodePubMessage(frames);
        assert.equal(msg.topic, c.topic);
        assert.equal(msg.seq, c.expected[i]!.seq);
        const r = decodeBatch(msg.payload);
        assert.equal(r.unknownEvents, 0);
        assert.equal(r.unknownKeys, 0);
        assert.deepStrictEqual(r.batch, c.expected[i]!.batch, `batch seq ${msg.seq}`);
        assert.deepStrictEqual(referenceDecode(msg.payload), r.batch, "msgpackr oracle agrees");
      });
    });

    test("hashes in canonical text match the file's strings", () => {
      c.live.forEach((frames, i) => {
        const json = batchToJson(i, decodeBatch(frames[2]!).batch);
        assert.equal(json.seq, i);
        json.events.forEach((ev, j) => {
          if (ev.type === "AllBlocksCleared") return;
          const want = c.expected[i]!.batch.events[j]!;
          assert.ok(want.type !== "AllBlocksCleared");
          assert.deepEqual(ev.blockHashes, want.blockHashes.map(hashToText));
          for (const h of ev.blockHashes) {
            // text form round-trips, and is decimal or 0x-hex
            assert.equal(hashToText(hashFromText(h)), h);
            assert.match(h, /^(-?[0-9]+|0x[0-9a-f]+)$/);
          }
        });
      });
    });

    test(`re-encoding in era ${c.era} reproduces the captured payload byte for byte`, () => {
      c.live.forEach((frames, i) => {
        const enc = encodeBatch(c.expected[i]!.batch, c.era);
        assert.equal(enc.toString("hex"), frames[2]!.toString("hex"), `payload seq ${i}`);
        const again = encodePubMessage(c.topic, c.expected[i]!.seq, enc);
        assert.deepStrictEqual(
          again.map((b) => b.toString("hex")),
          frames.map((b) => b.toString("hex")),
        );
      });
    });

    test("replay request and response frames", () => {
      const req = encodeReplayRequest(c.replayFromSeq);
      assert.deepStrictEqual(
        req.map((b) => b.toString("hex")),
        ["", c.replayFromSeq.toString(16).padStart(16, "0")],
      );
      const withTopic = c.era === "2026-07";
      const got = c.replayResponse.map(decodeReplayResponse);
      const last = got.pop()!;
      assert.equal(last.seq, null, "ends with the end marker");
      assert.equal(last.payload.length, 0);
      assert.equal(last.topic, withTopic ? "" : null);
      const want = c.expected.filter((e) => e.seq >= c.replayFromSeq);
      assert.deepStrictEqual(
        got.map((r) => r.seq),
        want.map((e) => e.seq),
      );
      got.forEach((r, i) => {
        assert.equal(r.topic, withTopic ? c.topic : null);
        assert.deepStrictEqual(decodeBatch(r.payload).batch, want[i]!.batch);
        // our encoder writes the same frames
        const enc = encodeReplayResponse(
          r.seq,
          encodeBatch(want[i]!.batch, c.era),
          withTopic ? c.topic : null,
        );
        assert.deepStrictEqual(
          enc.map((b) => b.toString("hex")),
          c.replayResponse[i]!.map((b) => b.toString("hex")),
        );
      });
      assert.deepStrictEqual(
        encodeReplayEnd(withTopic).map((b) => b.toString("hex")),
        c.replayResponse.at(-1)!.map((b) => b.toString("hex")),
      );
    });
  });
}
