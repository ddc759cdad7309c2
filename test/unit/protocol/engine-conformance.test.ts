/**
 * SGLang and TensorRT-LLM frames (test/fixtures/engine-kv-events) decode to their `expected`
 * with the one decoder every stream uses (no per-engine setting), re-encode byte for byte in
 * their era, and replay where the engine has a replay socket.
 */
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  decodeBatch,
  decodePubMessage,
  decodeReplayResponse,
  ENGINE_ERAS,
  encodeBatch,
  encodePubMessage,
  encodeReplayEnd,
  encodeReplayResponse,
  tierOf,
} from "../../../src/protocol/index.ts";
import { loadEngineConformance } from "./engine-conformance-data.ts";

const files = loadEngineConformance();

test("one fixture per engine era, and vLLM's hybrid-attention stream", () => {
  assert.deepEqual(files.map((f) => f.era).sort(), [...ENGINE_ERAS, "2026-07"].sort());
});

for (const c of files) {
  describe(`${c.file} (${c.engine}, era ${c.era})`, () => {
    test("live PUB messages decode to `expected`, nothing unknown", () => {
      assert.equal(c.live.length, c.expected.length);
      c.live.forEach((frames, i) => {
        const msg = decodePubMessage(frames);
        assert.equal(msg.topic, c.topic);
        assert.equal(msg.seq, c.expected[i]!.seq);
        const r = decodeBatch(msg.payload);
        assert.equal(r.unknownEvents, 0);
        assert.equal(r.unknownKeys, 0);
        assert.deepStrictEqual(r.batch, c.expected[i]!.batch, `batch seq ${msg.seq}`);
      });
    });

    test(`re-encoding in era ${c.era} reproduces the payload byte for byte`, () => {
      c.live.forEach((frames, i) => {
        const enc = encodeBatch(c.expected[i]!.batch, c.era);
        assert.equal(enc.toString("hex"), frames[2]!.toString("hex"), `payload seq ${i}`);
        assert.deepStrictEqual(
          encodePubMessage(c.topic, c.expected[i]!.seq, enc).map((b) => b.toString("hex")),
          frames.map((b) => b.toString("hex")),
        );
      });
    });

    if (c.replayResponse !== null && c.replayFromSeq !== null) {
      test("replay answers ['', seq, payload] then the end marker", () => {
        const got = c.replayResponse!.map(decodeReplayResponse);
        const last = got.pop()!;
        assert.equal(last.seq, null);
        const want = c.expected.filter((e) => e.seq >= c.replayFromSeq!);
        assert.deepStrictEqual(
          got.map((r) => r.seq),
          want.map((e) => e.seq),
        );
        got.forEach((r, i) => {
          assert.equal(r.topic, null);
          assert.deepStrictEqual(decodeBatch(r.payload).batch, want[i]!.batch);
          assert.deepStrictEqual(
            encodeReplayResponse(r.seq, encodeBatch(want[i]!.batch, c.era), null).map((b) =>
              b.toString("hex"),
            ),
            c.replayResponse![i]!.map((b) => b.toString("hex")),
          );
        });
        assert.deepStrictEqual(
          encodeReplayEnd(false).map((b) => b.toString("hex")),
          c.replayResponse!.at(-1)!.map((b) => b.toString("hex")),
        );
      });
    }
  });
}

test("SGLang's salted store: the 8th element is its metadata, not vLLM's lora_name", () => {
  const c = files.find((f) => f.era === "sglang-2026")!;
  const salted = decodeBatch(c.live[2]![2]!).batch.events[0]!;
  assert.equal(salted.type, "BlockStored");
  assert.ok(salted.type === "BlockStored");
  assert.equal(salted.cacheSalt, "tenant-a");
  assert.equal(salted.loraName, null);
  assert.equal(salted.blockHashes.length, 2);
  // an unsalted store of the same era carries no salt property at all
  const plain = decodeBatch(c.live[0]![2]!).batch.events[0]!;
  assert.ok(plain.type === "BlockStored" && !("cacheSalt" in plain));
});

test("SGLang's CPU_PINNED tier is the CPU tier", () => {
  assert.equal(tierOf("CPU_PINNED"), "CPU");
  assert.equal(tierOf("DISK"), "STORAGE");
  assert.equal(tierOf("EXTERNAL"), "STORAGE");
});

test("content-only page hashes repeat with the content (SGLang 2025)", () => {
  const c = files.find((f) => f.era === "sglang-2025")!;
  const evs = decodeBatch(c.live[0]![2]!).batch.events;
  const hashes = evs.map((e) => (e.type === "BlockStored" ? e.blockHashes[0] : null));
  assert.equal(hashes[0], hashes[2], "token 5 at pages 0 and 2");
  assert.equal(hashes[1], hashes[3], "token 7 at pages 1 and 3");
  assert.equal(decodeBatch(c.live[0]![2]!).batch.dpRank, 1, "the attention-DP rank");
});
