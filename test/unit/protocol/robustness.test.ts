/**
 * Hostile input: random bytes, random msgpack, mutated conformance payloads and lying headers only
 * ever produce ProtocolError, quickly; every DecodeLimits field produces its named error.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { Packr } from "msgpackr";
import {
  type BlockStored,
  blockStored,
  DEFAULT_DECODE_LIMITS,
  type DecodeLimits,
  decodeBatch,
  type EventBatch,
  encodeBatch,
  hashFromBytes,
  hashFromInt,
  ProtocolError,
} from "../../../src/protocol/index.ts";
import { loadConformance } from "./conformance-data.ts";
import { asDecoded, referenceDecode } from "./reference-decoder.ts";

const packr = new Packr({ useRecords: false, variableMapSize: true });
const payloads = loadConformance().flatMap((c) => c.live.map((m) => m[2]!));
let slowest = 0;
let total = 0;
let calls = 0;
/** No hang: the slowest single decode (generous for a shared 2-core machine with GC pauses) and the mean. */
function assertFast(): void {
  assert.ok(slowest < 500, `slowest decode took ${slowest.toFixed(1)} ms`);
  assert.ok(total / calls < 1, `mean decode took ${(total / calls).toFixed(3)} ms`);
  slowest = 0;
  total = 0;
  calls = 0;
}

/** decodeBatch must return or throw a ProtocolError that is not the internal-bug safety net. */
function tryDecode(bytes: Uint8Array, limits?: Partial<DecodeLimits>): EventBatch | ProtocolError {
  const t0 = performance.now();
  try {
    return decodeBatch(bytes, limits).batch;
  } catch (e) {
    assert.ok(e instanceof ProtocolError, `non-ProtocolError: ${(e as Error)?.stack}`);
    assert.doesNotMatch(e.message, /internal decoder error/, e.message);
    return e;
  } finally {
    const dt = performance.now() - t0;
    slowest = Math.max(slowest, dt);
    total += dt;
    calls++;
  }
}

test("random bytes only ever yield ProtocolError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), (u8) => {
      tryDecode(u8);
    }),
    { numRuns: 5000 },
  );
  // random bytes after a plausible batch prefix get deeper into the decoder
  fc.assert(
    fc.property(
      fc.constantFrom("92cb41d954fc40000000", "93cb41d954fc400000009", "82a27473"),
      fc.uint8Array({ maxLength: 200 }),
      (prefix, u8) => {
        tryDecode(Buffer.concat([Buffer.from(prefix.length % 2 ? `${prefix}1` : prefix, "hex"), u8]));
      },
    ),
    { numRuns: 5000 },
  );
  assertFast();
});

test("random msgpack values only ever yield ProtocolError", () => {
  fc.assert(
    fc.property(fc.anything({ withBigInt: true, withTypedArray: true, maxDepth: 5 }), (v) => {
      let bytes: Buffer;
      try {
        bytes = packr.pack([1.5, [v], 0]);
      } catch {
        return; // msgpackr can't pack it: nothing to test
      }
      tryDecode(bytes);
      tryDecode(packr.pack(v));
    }),
    { numRuns: 2000 },
  );
});

type Mutation = {
  kind: "set" | "insert" | "delete" | "truncate" | "dup";
  at: number;
  byte: number;
  len: number;
};
const mutationArb = fc.record({
  kind: fc.constantFrom("set", "set", "set", "insert", "delete", "truncate", "dup"),
  at: fc.nat(),
  byte: fc.oneof(
    fc.constantFrom(0x00, 0x7f, 0x80, 0x90, 0xc0, 0xc1, 0xc4, 0xc6, 0xcf, 0xd3, 0xdc, 0xdd, 0xdf, 0xff),
    fc.nat(255),
  ),
  len: fc.integer({ min: 1, max: 16 }),
}) as fc.Arbitrary<Mutation>;

function hasRecordHeader(b: Uint8Array): boolean {
  for (let i = 0; i + 1 < b.length; i++)
    if ((b[i] === 0xd4 || b[i] === 0xd5) && b[i + 1] === 0x72) return true;
  return false;
}

function mutate(src: Buffer, muts: Mutation[]): Buffer {
  let b = Buffer.from(src);
  for (const m of muts) {
    const at = b.length === 0 ? 0 : m.at % b.length;
    if (m.kind === "set" && b.length > 0) b[at] = m.byte;
    else if (m.kind === "insert")
      b = Buffer.concat([b.subarray(0, at), Buffer.alloc(m.len, m.byte), b.subarray(at)]);
    else if (m.kind === "delete") b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.len)]);
    else if (m.kind === "truncate") b = b.subarray(0, at);
    else if (m.kind === "dup") b = Buffer.concat([b.subarray(0, at + m.len), b.subarray(at)]);
  }
  return b;
}

test("mutated conformance payloads: ProtocolError or a batch msgpackr's reading agrees with", () => {
  slowest = 0;
  let decoded = 0;
  let rejected = 0;
  fc.assert(
    fc.property(
      fc.constantFrom(...payloads),
      fc.array(mutationArb, { minLength: 1, maxLength: 3 }),
      (p, muts) => {
        const bytes = mutate(p, muts);
        const r = tryDecode(bytes);
        if (r instanceof ProtocolError) {
          rejected++;
          return;
        }
        decoded++;
        // msgpackr reads a fixext 1 / fixext 2 of type 0x72 as a record definition of its own,
        // whatever its options: no reference for such bytes (a rare mutation)
        if (hasRecordHeader(bytes)) return;
        assert.deepStrictEqual(referenceDecode(bytes), r);
      },
    ),
    { numRuns: 10000 },
  );
  assert.ok(rejected > 1000 && decoded > 100, `rejected ${rejected}, decoded ${decoded}`);
  assertFast();
});

test("lying length headers cost nothing: errors before any allocation", () => {
  const cases: Array<[string, string, string?]> = [
    ["92 07 dd ffffffff", "limit_exceeded", "maxEventsPerBatch"],
    ["dd ffffffff", "malformed_msgpack"],
    ["df ffffffff", "limit_exceeded", "maxMapEntries"],
    ["92 07 91 92 ac426c6f636b52656d6f766564 dd ffffffff", "limit_exceeded", "maxHashesPerEvent"],
    ["92 07 91 96 ab426c6f636b53746f726564 90 c0 dd ffffffff", "limit_exceeded", "maxTokensPerEvent"],
    ["92 07 91 92 ac426c6f636b52656d6f766564 91 c6 ffffffff", "malformed_msgpack"],
    ["92 07 91 92 db ffffffff", "malformed_msgpack"],
    ["92 07 91 92 ac426c6f636b52656d6f766564 91 c4 ff", "malformed_msgpack"],
  ];
  for (const [h, code, limit] of cases) {
    const t0 = performance.now();
    assert.throws(
      () => decodeBatch(Buffer.from(h.replace(/ /g, ""), "hex")),
      (e: unknown) => e instanceof ProtocolError && e.code === code && e.limit === limit,
      h,
    );
    assert.ok(performance.now() - t0 < 50, h);
  }
  // with the count limits lifted, the remaining-bytes check still refuses before allocating
  const big = { maxEventsPerBatch: 2 ** 32, maxHashesPerEvent: 2 ** 32, maxTokensPerEvent: 2 ** 32 };
  for (const [h] of cases.filter(([, c, l]) => c === "limit_exceeded" && l !== "maxMapEntries")) {
    assert.throws(
      () => decodeBatch(Buffer.from(h.replace(/ /g, ""), "hex"), big),
      (e: unknown) => e instanceof ProtocolError && e.code === "malformed_msgpack",
    );
  }
});

test("deep nesting is cut at maxDepth without exhausting the stack", () => {
  const depth = 200_000;
  const nested = Buffer.concat([Buffer.alloc(depth, 0x91), Buffer.from([0xc0])]); // [[[...nil...]]]
  const removed = Buffer.from("BlockRemoved").toString("hex");
  const hex = (h: string) => Buffer.from(h.replace(/ /g, ""), "hex");
  const isDepth = (e: unknown) =>
    e instanceof ProtocolError && e.code === "limit_exceeded" && e.limit === "maxDepth";
  // as an unknown trailing field of an array event: skipped, cut at the depth limit
  assert.throws(
    () => decodeBatch(Buffer.concat([hex(`92 07 91 96 ac${removed} 9101 c0 c0 c0`), nested])),
    isDepth,
  );
  // as an unknown key of a map event, and as an unknown batch field
  assert.throws(
    () =>
      decodeBatch(
        Buffer.concat([
          hex(`92 07 91 83 a474797065 ac${removed} ac626c6f636b5f686173686573 9101 a178`),
          nested,
        ]),
      ),
    isDepth,
  );
  assert.throws(
    () => decodeBatch(Buffer.concat([hex("93 07 90 00 91"), nested])),
    (e: unknown) => e instanceof ProtocolError,
  );
  assert.throws(() => decodeBatch(Buffer.concat([hex("94 07 90 00"), nested])), isDepth);
  // inside extra_keys (kept values)
  const stored = Buffer.from("BlockStored").toString("hex");
  assert.throws(
    () => decodeBatch(Buffer.concat([hex(`92 07 91 99 ab${stored} 90 c0 90 10 c0 c0 c0`), nested])),
    isDepth,
  );
  // a huge limit set by the caller still ends in a ProtocolError (stack overflow is caught)
  assert.throws(
    () =>
      decodeBatch(Buffer.concat([hex(`92 07 91 96 ac${removed} 9101 c0 c0 c0`), nested]), { maxDepth: 1e9 }),
    (e: unknown) => e instanceof ProtocolError,
  );
});

function stored(over: Partial<BlockStored>): BlockStored {
  return blockStored([hashFromInt(1)], null, [1, 2, 3, 4], 4, { medium: "GPU", ...over });
}
const nest = (d: number): unknown => (d === 0 ? 1 : [nest(d - 1)]);

test("each limit produces limit_exceeded naming it, and the limit itself is allowed", () => {
  const cases: Array<[keyof DecodeLimits, number, EventBatch]> = [
    ["maxEventsPerBatch", 3, { ts: 1, dpRank: 0, events: [stored({}), stored({}), stored({}), stored({})] }],
    [
      "maxHashesPerEvent",
      4,
      { ts: 1, dpRank: 0, events: [stored({ blockHashes: [1, 2, 3, 4, 5].map(hashFromInt) })] },
    ],
    [
      "maxTokensPerEvent",
      15,
      { ts: 1, dpRank: 0, events: [stored({ tokenIds: Array.from({ length: 16 }, (_, i) => i) })] },
    ],
    ["maxStringBytes", 99, { ts: 1, dpRank: 0, events: [stored({ loraName: "x".repeat(100) })] }],
    [
      "maxHashBytes",
      32,
      { ts: 1, dpRank: 0, events: [stored({ blockHashes: [hashFromBytes(Buffer.alloc(33, 7))] })] },
    ],
    [
      "maxExtraKeys",
      9,
      { ts: 1, dpRank: 0, events: [stored({ extraKeys: Array.from({ length: 10 }, (_, i) => i) })] },
    ],
    ["maxDepth", 9, { ts: 1, dpRank: 0, events: [stored({ extraKeys: [nest(6)] })] }],
    ["maxMapEntries", 7, { ts: 1, dpRank: 0, events: [stored({})] }],
  ];
  for (const [limit, max, batch] of cases) {
    const bytes = encodeBatch(batch, limit === "maxMapEntries" ? "2026-07" : "2026-05");
    assert.deepStrictEqual(decodeBatch(bytes).batch, asDecoded(batch), `${limit}: within the defaults`);
    assert.throws(
      () => decodeBatch(bytes, { [limit]: max }),
      (e: unknown) => e instanceof ProtocolError && e.code === "limit_exceeded" && e.limit === limit,
      limit,
    );
    assert.deepStrictEqual(
      decodeBatch(bytes, { [limit]: max + 1 }).batch,
      asDecoded(batch),
      `${limit}: at the limit`,
    );
  }
  const bytes = encodeBatch({ ts: 1, dpRank: 0, events: [stored({})] }, "2026-05");
  assert.throws(
    () => decodeBatch(bytes, { maxPayloadBytes: bytes.length - 1 }),
    (e: unknown) =>
      e instanceof ProtocolError && e.code === "limit_exceeded" && e.limit === "maxPayloadBytes",
  );
  assert.equal(decodeBatch(bytes, { maxPayloadBytes: bytes.length }).batch.events.length, 1);
  assert.ok(DEFAULT_DECODE_LIMITS.maxPayloadBytes >= 1 << 20);
});
