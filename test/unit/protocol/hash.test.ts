/** HashKey helpers: layout, exactness at the edges, text forms, agreement between builders. */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { ProtocolError } from "../../../src/protocol/errors.ts";
import {
  hashFromBigInt,
  hashFromBytes,
  hashFromInt,
  hashFromText,
  hashFromUint64Parts,
  hashKind,
  hashToBigInt,
  hashToText,
  isHashKey,
} from "../../../src/protocol/hash.ts";

const bytesOf = (key: string) => Buffer.from(key, "latin1").toString("hex");

test("layout: u/n + 8 big-endian bytes, b + raw bytes", () => {
  assert.equal(bytesOf(hashFromInt(0)), `75${"00".repeat(8)}`);
  assert.equal(bytesOf(hashFromInt(258)), "75" + "0000000000000102");
  assert.equal(bytesOf(hashFromInt(-1)), `6e${"ff".repeat(8)}`);
  assert.equal(bytesOf(hashFromBigInt(-4611686018427387904n)), "6e" + "c000000000000000");
  assert.equal(bytesOf(hashFromBigInt(2n ** 64n - 1n)), `75${"ff".repeat(8)}`);
  assert.equal(bytesOf(hashFromBigInt(-(2n ** 63n))), "6e" + "8000000000000000");
  assert.equal(bytesOf(hashFromUint64Parts(0xab54a98c, 0xeb1f0ad2)), "75" + "ab54a98ceb1f0ad2");
  const raw = Buffer.from("00ff10", "hex");
  assert.equal(bytesOf(hashFromBytes(raw)), "62" + "00ff10");
  assert.equal(bytesOf(hashFromBytes(raw, 1, 3)), "62" + "ff10");
  assert.equal(hashKind(hashFromInt(5)), "uint");
  assert.equal(hashKind(hashFromInt(-5)), "negint");
  assert.equal(hashKind(hashFromBytes(raw)), "bytes");
  assert.ok(isHashKey(hashFromInt(5)) && !isHashKey("x") && !isHashKey("u12"));
});

test("text: decimal for ints incl. > 2^63 and negative, 0x-hex for bytes", () => {
  assert.equal(hashToText(hashFromBigInt(12345678901234567890n)), "12345678901234567890");
  assert.equal(hashToText(hashFromBigInt(2n ** 64n - 1n)), "18446744073709551615");
  assert.equal(hashToText(hashFromBigInt(-4611686018427387904n)), "-4611686018427387904");
  assert.equal(hashToText(hashFromBigInt(-(2n ** 63n))), "-9223372036854775808");
  assert.equal(hashToText(hashFromInt(Number.MAX_SAFE_INTEGER)), "9007199254740991");
  assert.equal(hashToText(hashFromInt(Number.MIN_SAFE_INTEGER)), "-9007199254740991");
  assert.equal(hashToText(hashFromInt(0)), "0");
  assert.equal(hashToText(hashFromBytes(Buffer.from("0aFF", "hex"))), "0x0aff");
});

test("hashFromText accepts decimal, 0x-hex and plain 32/64-char hex; rejects the rest", () => {
  const h32 = "9f0817516aedfd04d37a6fe103c6dd8e8e5f7cfabc6314f627778ea5fcc821ee";
  assert.equal(hashFromText(h32), hashFromBytes(Buffer.from(h32, "hex")));
  assert.equal(hashFromText(`0x${h32}`), hashFromText(h32));
  assert.equal(hashFromText(`0x${"AB".repeat(16)}`), hashFromText("ab".repeat(16)));
  // 32 decimal digits can't be an int64/uint64: it is a 16-byte hex digest
  assert.equal(hashToText(hashFromText("1".repeat(32))), `0x${"1".repeat(32)}`);
  assert.equal(hashFromText("18446744073709551615"), hashFromBigInt(2n ** 64n - 1n));
  assert.equal(hashFromText("-9223372036854775808"), hashFromBigInt(-(2n ** 63n)));
  for (const bad of [
    "",
    "18446744073709551616",
    "-9223372036854775809",
    "0x",
    "0xabc",
    "12a",
    "01",
    "-0x12",
    " 1",
  ]) {
    assert.throws(
      () => hashFromText(bad),
      (e: unknown) => e instanceof ProtocolError && e.code === "bad_schema",
      JSON.stringify(bad),
    );
  }
});

test("helpers reject out-of-range input", () => {
  assert.throws(() => hashFromInt(2 ** 53), RangeError);
  assert.throws(() => hashFromInt(1.5), RangeError);
  assert.throws(() => hashFromBigInt(2n ** 64n), RangeError);
  assert.throws(() => hashFromBigInt(-(2n ** 63n) - 1n), RangeError);
  assert.throws(() => hashToBigInt(hashFromBytes(Buffer.from([1]))), RangeError);
});

const int64Range = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n });

test("property: bigint ↔ key ↔ text round-trips; builders agree", () => {
  fc.assert(
    fc.property(int64Range, (b) => {
      const k = hashFromBigInt(b);
      assert.equal(hashToBigInt(k), b);
      assert.equal(hashToText(k), b.toString());
      assert.equal(hashFromText(b.toString()), k);
      if (b >= 0n) assert.equal(hashFromUint64Parts(Number(b >> 32n), Number(b & 0xffffffffn)), k);
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.maxSafeInteger(), (n) => {
      assert.equal(hashFromInt(n), hashFromBigInt(BigInt(n)));
      assert.equal(hashToText(hashFromInt(n)), String(n));
    }),
    { numRuns: 2000 },
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 64 }), (u8) => {
      const k = hashFromBytes(u8);
      assert.equal(k.length, u8.length + 1);
      assert.equal(hashFromText(hashToText(k)), k);
    }),
  );
});

test("property: distinct values give distinct keys (ints vs bytes never collide)", () => {
  fc.assert(
    fc.property(int64Range, int64Range, (a, b) => {
      assert.equal(hashFromBigInt(a) === hashFromBigInt(b), a === b);
    }),
  );
  const eightBytes = Buffer.from("0000000000000001", "hex");
  assert.notEqual(hashFromBytes(eightBytes), hashFromInt(1));
});
