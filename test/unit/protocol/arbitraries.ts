/** fast-check generators of decoded batches that an engine of a given era could send. */
import fc from "fast-check";
import type { WireEra } from "../../../src/protocol/encode.ts";
import { hashFromBigInt, hashFromBytes, hashFromInt } from "../../../src/protocol/hash.ts";
import type { BlockRemoved, BlockStored, EventBatch, HashKey, KvEvent } from "../../../src/protocol/types.ts";
import { asDecoded } from "./reference-decoder.ts";

export const hashArb: fc.Arbitrary<HashKey> = fc.oneof(
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 64n - 1n }).map(hashFromBigInt),
  fc.integer({ min: -70000, max: 70000 }).map(hashFromInt),
  fc
    .constantFrom(0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, -32, -33, -128, -129)
    .map(hashFromInt),
  fc.uint8Array({ minLength: 32, maxLength: 32 }).map((u) => hashFromBytes(u)),
  fc.uint8Array({ minLength: 16, maxLength: 16 }).map((u) => hashFromBytes(u)),
);

const intArb = fc.oneof(
  fc.integer({ min: -(2 ** 31), max: 2 ** 32 }),
  fc.maxSafeInteger(),
  fc.constantFrom(0, 127, 128, -32, -33, 255, 256, 65535, 65536),
);
const strArb = fc.oneof(
  fc.constantFrom("GPU", "CPU", "STORAGE", "FS"),
  fc.string({ maxLength: 40 }),
  fc.string({ minLength: 32, maxLength: 300 }),
);
const nullable = <T>(a: fc.Arbitrary<T>) => fc.option(a, { nil: null, freq: 3 });

/** extra_keys values: what msgspec can write and we read back identically. */
const leafArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  intArb,
  fc.double().filter((d) => !Number.isSafeInteger(d) || Object.is(d, -0)),
  fc.oneof(
    fc.bigInt({ min: -(2n ** 63n), max: -(2n ** 53n) }),
    fc.bigInt({ min: 2n ** 53n, max: 2n ** 64n - 1n }),
  ),
  fc.string({ maxLength: 20 }),
  fc.uint8Array({ maxLength: 20 }),
);
const { value: valueArb } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    leafArb,
    fc.array(tie("value"), { maxLength: 4 }),
    fc.dictionary(
      fc.string({ maxLength: 8 }).filter((k) => k !== "__proto__"),
      tie("value"),
      { maxKeys: 4, noNullPrototype: true },
    ),
  ),
}));
export const extraKeysArb = fc.array(valueArb, { maxLength: 4 });

const has = (era: WireEra, since: WireEra) => era >= since;

export function storedArb(era: WireEra): fc.Arbitrary<BlockStored> {
  const v = <T>(since: WireEra, a: fc.Arbitrary<T | null>) => (has(era, since) ? a : fc.constant(null));
  return fc.record(
    {
      type: fc.constant("BlockStored" as const),
      blockHashes: fc.array(hashArb, { maxLength: 8 }),
      parentBlockHash: nullable(hashArb),
      tokenIds: fc.array(fc.oneof(fc.nat(200_000), intArb), { maxLength: 40 }),
      blockSize: fc.oneof(fc.constantFrom(1, 16, 32, 64), fc.integer({ min: 1, max: 100_000 })),
      loraId: nullable(intArb),
      medium: v("2025-09", nullable(strArb)),
      loraName: v("2026-05", nullable(strArb)),
      extraKeys: v("2026-05", nullable(extraKeysArb)),
      groupIdx: v("2026-05", nullable(intArb)),
      kvCacheSpecKind: v("2026-05", nullable(strArb)),
      kvCacheSpecSlidingWindow: v("2026-05", nullable(intArb)),
      locality: v("2026-07", nullable(strArb)),
    },
    { noNullPrototype: true },
  );
}

export function removedArb(era: WireEra): fc.Arbitrary<BlockRemoved> {
  const v = <T>(since: WireEra, a: fc.Arbitrary<T | null>) => (has(era, since) ? a : fc.constant(null));
  return fc.record(
    {
      type: fc.constant("BlockRemoved" as const),
      blockHashes: fc.array(hashArb, { maxLength: 8 }),
      medium: v("2025-09", nullable(strArb)),
      groupIdx: v("2026-05", nullable(intArb)),
      locality: v("2026-07", nullable(strArb)),
    },
    { noNullPrototype: true },
  );
}

export function eventArb(era: WireEra): fc.Arbitrary<KvEvent> {
  return fc.oneof(
    { arbitrary: storedArb(era), weight: 4 },
    { arbitrary: removedArb(era), weight: 2 },
    { arbitrary: fc.constant({ type: "AllBlocksCleared" as const }), weight: 1 },
  );
}

/** A batch as the decoder gives it back (`hybrid` included: reference-decoder.ts). */
export function batchArb(era: WireEra): fc.Arbitrary<EventBatch> {
  return fc
    .record(
      {
        ts: fc.oneof(fc.double({ min: 1.6e9, max: 2e9, noNaN: true }), fc.double()),
        events: fc.array(eventArb(era), { maxLength: 20 }),
        dpRank: era === "2025-04" ? fc.constant(null) : nullable(fc.nat(1024)),
      },
      { noNullPrototype: true },
    )
    .map(asDecoded);
}
