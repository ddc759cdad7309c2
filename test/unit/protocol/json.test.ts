/** eventToJson / batchToJson: camelCase, hashes in canonical text, always JSON-serialisable. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import {
  batchToJson,
  decodeBatch,
  encodeBatch,
  eventToJson,
  hashFromBigInt,
  hashFromBytes,
  hashFromInt,
  hashFromText,
  WIRE_ERAS,
} from "../../../src/protocol/index.ts";
import { batchArb } from "./arbitraries.ts";

test("batchToJson: documented shape", () => {
  const json = batchToJson(41, {
    ts: 1.5,
    dpRank: 2,
    events: [
      {
        type: "BlockStored",
        blockHashes: [hashFromBigInt(2n ** 64n - 1n), hashFromInt(-3)],
        parentBlockHash: hashFromBytes(Buffer.from("00ff", "hex")),
        tokenIds: [1, 2],
        blockSize: 2,
        loraId: 7,
        loraName: "sql",
        medium: "CPU",
        extraKeys: [[2n ** 60n, new Uint8Array([1, 255]), "x"]],
        groupIdx: 1,
        kvCacheSpecKind: "full_attention",
        kvCacheSpecSlidingWindow: null,
        locality: null,
      },
      { type: "BlockRemoved", blockHashes: [hashFromInt(5)], medium: null, groupIdx: null, locality: "rack" },
      { type: "AllBlocksCleared" },
    ],
  });
  assert.deepStrictEqual(JSON.parse(JSON.stringify(json)), {
    seq: 41,
    ts: 1.5,
    dpRank: 2,
    events: [
      {
        type: "BlockStored",
        blockHashes: ["18446744073709551615", "-3"],
        parentBlockHash: "0x00ff",
        tokenIds: [1, 2],
        blockSize: 2,
        loraId: 7,
        loraName: "sql",
        medium: "CPU",
        extraKeys: [["1152921504606846976", "0x01ff", "x"]],
        groupIdx: 1,
        kvCacheSpecKind: "full_attention",
        kvCacheSpecSlidingWindow: null,
        locality: null,
      },
      { type: "BlockRemoved", blockHashes: ["5"], medium: null, groupIdx: null, locality: "rack" },
      { type: "AllBlocksCleared" },
    ],
  });
});

test("property: JSON of any decoded batch stringifies, and its hash texts parse back to the keys", () => {
  fc.assert(
    fc.property(
      fc.constantFrom(...WIRE_ERAS).chain((era) => batchArb(era).map((b) => [era, b] as const)),
      ([era, b]) => {
        const batch = decodeBatch(encodeBatch(b, era)).batch;
        const json = JSON.parse(JSON.stringify(batchToJson(3, batch)));
        assert.equal(json.events.length, batch.events.length);
        batch.events.forEach((ev, i) => {
          assert.equal(json.events[i].type, ev.type);
          if (ev.type === "AllBlocksCleared") return;
          assert.deepStrictEqual(json.events[i].blockHashes.map(hashFromText), ev.blockHashes);
          const evJson = eventToJson(ev);
          assert.ok(evJson.type !== "AllBlocksCleared");
          assert.deepStrictEqual(evJson.blockHashes, json.events[i].blockHashes);
        });
      },
    ),
    { numRuns: 200 },
  );
});
