/** Decoder edge cases: every int width, bin widths, map batches/events, unknowns, schema errors. */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Packr } from "msgpackr";
import {
  type BlockRemoved,
  type BlockStored,
  decodeBatch,
  hashFromBigInt,
  hashFromBytes,
  hashFromInt,
  ProtocolError,
} from "../../../src/protocol/index.ts";

const packr = new Packr({ useRecords: false, variableMapSize: true });
const pack = (v: unknown) => packr.pack(v);
const TS = "cb41d954fc40000000"; // float64 1700000000
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ""), "hex");
/** [ts, [["BlockRemoved", [<hash bytes>]]]] with the hash written as given. */
const removedWith = (hashHex: string) =>
  hex(`92 ${TS} 91 92 ac${Buffer.from("BlockRemoved").toString("hex")} 91 ${hashHex}`);
const onlyHash = (payload: Buffer) => (decodeBatch(payload).batch.events[0] as BlockRemoved).blockHashes[0];
const code = (c: string) => (e: unknown) => e instanceof ProtocolError && e.code === c;

test("an integer hash gives the same key in every msgpack width", () => {
  const five = hashFromInt(5);
  for (const h of [
    "05",
    "cc05",
    "cd0005",
    "ce00000005",
    "cf0000000000000005",
    "d005",
    "d10005",
    "d200000005",
    "d30000000000000005",
  ]) {
    assert.equal(onlyHash(removedWith(h)), five, h);
  }
  const minus5 = hashFromInt(-5);
  for (const h of ["fb", "d0fb", "d1fffb", "d2fffffffb", "d3fffffffffffffffb"]) {
    assert.equal(onlyHash(removedWith(h)), minus5, h);
  }
  assert.equal(onlyHash(removedWith("cfffffffffffffffff")), hashFromBigInt(2n ** 64n - 1n));
  assert.equal(onlyHash(removedWith("cf8000000000000000")), hashFromBigInt(2n ** 63n));
  assert.equal(onlyHash(removedWith("d38000000000000000")), hashFromBigInt(-(2n ** 63n)));
  assert.equal(onlyHash(removedWith("d1ff7f")), hashFromInt(-129));
  assert.equal(onlyHash(removedWith("d2ffff7fff")), hashFromInt(-32769));
  assert.equal(onlyHash(removedWith("ce80000000")), hashFromInt(2 ** 31));
});

test("byte-string hashes in bin8/bin16/bin32 give the same key", () => {
  const bytes = Buffer.alloc(32, 0xab);
  const want = hashFromBytes(bytes);
  const b = bytes.toString("hex");
  for (const h of [`c420${b}`, `c50020${b}`, `c600000020${b}`]) assert.equal(onlyHash(removedWith(h)), want);
  assert.equal(onlyHash(removedWith(`c410${"cd".repeat(16)}`)), hashFromBytes(Buffer.alloc(16, 0xcd)));
  assert.throws(() => decodeBatch(removedWith("c400")), code("bad_schema"), "empty bin");
  assert.throws(() => decodeBatch(removedWith("a161")), code("bad_schema"), "str hash");
  assert.throws(() => decodeBatch(removedWith("cb3ff0000000000000")), code("bad_schema"), "float hash");
});

test("map-form batch and events: defaults, type not first, unknown keys and types counted", () => {
  const payload = pack({
    ts: 12.5,
    events: [
      {
        type: "BlockStored",
        block_hashes: [1, 2],
        parent_block_hash: null,
        token_ids: [1, 2],
        block_size: 1,
      },
      { block_hashes: [3], medium: "CPU", future_field: { a: [1, 2] }, type: "BlockRemoved", group_idx: 2 },
      { type: "FancyNewEvent", block_hashes: [9], whatever: "x" },
      { type: "AllBlocksCleared" },
    ],
    data_parallel_rank: 3,
    new_batch_field: [1],
  });
  const r = decodeBatch(payload);
  assert.equal(r.unknownEvents, 1);
  assert.equal(r.unknownKeys, 2); // future_field, new_batch_field
  assert.equal(r.batch.ts, 12.5);
  assert.equal(r.batch.dpRank, 3);
  assert.equal(r.batch.events.length, 3);
  const s = r.batch.events[0] as BlockStored;
  assert.deepEqual(
    [s.type, s.blockHashes, s.tokenIds, s.blockSize],
    ["BlockStored", [hashFromInt(1), hashFromInt(2)], [1, 2], 1],
  );
  assert.deepEqual(
    [s.loraId, s.medium, s.loraName, s.extraKeys, s.groupIdx, s.locality],
    [null, null, null, null, null, null],
  );
  assert.deepStrictEqual(r.batch.events[1], {
    type: "BlockRemoved",
    blockHashes: [hashFromInt(3)],
    medium: "CPU",
    groupIdx: 2,
    locality: null,
  });
  assert.deepStrictEqual(r.batch.events[2], { type: "AllBlocksCleared" });
});

test("array-form: unknown event types skipped, extra trailing fields counted, optional trailing fields", () => {
  const payload = pack([
    1.5,
    [
      ["BlockStored", [7], null, [], 16], // no lora_id (shortest accepted)
      ["SomethingElse", 1, 2, [3]],
      ["BlockRemoved", [7], "GPU", 1, "rack-1", "future", 42],
      ["AllBlocksCleared"],
    ],
    null,
  ]);
  const r = decodeBatch(payload);
  assert.equal(r.unknownEvents, 1);
  assert.equal(r.unknownKeys, 2);
  assert.equal(r.batch.dpRank, null);
  assert.deepStrictEqual(r.batch.events[1], {
    type: "BlockRemoved",
    blockHashes: [hashFromInt(7)],
    medium: "GPU",
    groupIdx: 1,
    locality: "rack-1",
  });
  assert.equal((r.batch.events[0] as BlockStored).loraId, null);
});

test("extra_keys values of every kind come back (bigints only beyond 2^53)", () => {
  const payload = pack([
    1,
    [
      [
        "BlockStored",
        [1],
        null,
        [],
        16,
        null,
        null,
        null,
        [["img", 3, 2n ** 60n, -(2n ** 60n), 1.25, true, null, Buffer.from([1, 2]), { k: [1] }]],
        null,
        null,
        null,
      ],
    ],
    0,
  ]);
  const s = decodeBatch(payload).batch.events[0] as BlockStored;
  // the edges of the safe range: ±(2^53-1) are numbers, ±2^53 bigints
  const edges = pack([
    1,
    [
      [
        "BlockStored",
        [1],
        null,
        [],
        16,
        null,
        null,
        null,
        [2n ** 53n - 1n, 2n ** 53n, -(2n ** 53n) + 1n, -(2n ** 53n)],
      ],
    ],
    0,
  ]);
  assert.deepStrictEqual((decodeBatch(edges).batch.events[0] as BlockStored).extraKeys, [
    2 ** 53 - 1,
    2n ** 53n,
    -(2 ** 53) + 1,
    -(2n ** 53n),
  ]);
  assert.deepStrictEqual(s.extraKeys, [
    ["img", 3, 2n ** 60n, -(2n ** 60n), 1.25, true, null, new Uint8Array([1, 2]), { k: [1] }],
  ]);
});

test("ts may be float32/int; ints beyond 2^53 in int fields are rejected", () => {
  assert.equal(decodeBatch(hex("92 ca3fc00000 90")).batch.ts, 1.5);
  assert.equal(decodeBatch(hex("92 07 90")).batch.ts, 7);
  assert.throws(
    () => decodeBatch(pack([1, [["BlockStored", [1], null, [2n ** 60n], 16, null]]])),
    code("bad_schema"),
  );
  assert.throws(
    () => decodeBatch(pack([1, [["BlockStored", [1], null, [], 2n ** 60n, null]]])),
    code("bad_schema"),
  );
});

test("schema errors are bad_schema; broken msgpack is malformed_msgpack", () => {
  const schemaCases: unknown[] = [
    [1],
    "x",
    { ts: 1 },
    [1, {}],
    [1, [[]]],
    [1, [7]],
    [1, [["BlockStored", [1], null, [], 16, null]]].map((x, i) => (i === 0 ? "ts" : x)),
    [1, [["BlockStored", [1], null, []]]],
    [1, [["BlockStored", [1], null, [], 0, null]]],
    [1, [["BlockStored", [1], null, [1.5], 16, null]]],
    [1, [["BlockStored", [1], null, [], 16, "lora"]]],
    [1, [["BlockRemoved", 5]]],
    [1, [["BlockRemoved", [1], 5]]],
    [1, [{ block_hashes: [1] }]],
    [1, [{ type: 5 }]],
    [1, [{ type: "BlockStored", block_hashes: [1] }]],
    [1, [{ type: "BlockRemoved" }]],
    [1, [], "rank"],
  ];
  for (const v of schemaCases)
    assert.throws(() => decodeBatch(pack(v)), code("bad_schema"), JSON.stringify(v));
  for (const h of ["", "c1", "92", "92cb41d9", "dc0005", "92 07 91 92", "92 07 90 c0", "92 07 90 00"]) {
    assert.throws(() => decodeBatch(hex(h)), code("malformed_msgpack"), h);
  }
});
