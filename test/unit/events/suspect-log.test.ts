/**
 * The log a suspect stream keeps for its audit (suspect-log.ts): strong identities that catch a
 * byte flipped anywhere, the batches applied just before the sign, the bound.
 */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { fingerprint } from "../../../src/events/seq-tracker.ts";
import { SuspectLog } from "../../../src/events/suspect-log.ts";
import { decodeBatch } from "../../../src/protocol/decode.ts";
import { storeBatch } from "./rig.ts";

/** storeBatch(h) with one token id's low byte changed in the middle of the payload: still decodes. */
function midFlip(h: number): Uint8Array {
  const b = Uint8Array.from(storeBatch(h));
  const tok = h * 1000 + 5;
  const at = Buffer.from(b).indexOf(Buffer.from([0xcd, tok >> 8, tok & 0xff])) + 2;
  assert.ok(at >= 32 && at < b.length - 32, `offset ${at} of ${b.length} is in the middle`);
  b[at] ^= 0x01;
  return b;
}

const decodes = (p: Uint8Array) => () => {
  try {
    decodeBatch(p);
    return true;
  } catch {
    return false;
  }
};

describe("SuspectLog", () => {
  it("a byte flipped in the middle of a batch that still decodes is a mismatch", () => {
    const good = storeBatch(4);
    const bad = midFlip(4);
    assert.equal(fingerprint(bad), fingerprint(good), "the head/tail fingerprint cannot see it");
    assert.equal(decodeBatch(bad).batch.events.length, 1);
    const log = new SuspectLog(100);
    log.begin();
    log.note(3, bad); // what the wire delivered and the stream applied
    assert.equal(log.firstUnconfirmed(), 3);
    assert.equal(log.check(3, good, decodes(good)), "mismatch");
    // the same bytes match; a copy garbled on the audit's way proves nothing
    const log2 = new SuspectLog(100);
    log2.begin();
    log2.note(3, good);
    assert.equal(log2.check(3, Uint8Array.of(0xc1), decodes(Uint8Array.of(0xc1))), "garbled");
    assert.equal(log2.unconfirmed(), 1);
    assert.equal(log2.check(3, Uint8Array.from(good), decodes(good)), "match");
    assert.equal(log2.unconfirmed(), 0);
    assert.equal(log2.firstUnconfirmed(), null);
  });

  it("logs the batches applied just before the sign; the buffer may have moved past those only", () => {
    const log = new SuspectLog(100, 4);
    for (let s = 0; s < 10; s++) log.note(s, storeBatch(s + 1)); // not suspect: references only
    log.begin();
    assert.equal(log.firstUnconfirmed(), 6, "the last 4 before the sign");
    log.note(10, storeBatch(11));
    log.note(11, storeBatch(12));
    assert.equal(log.unconfirmed(), 6);
    // the engine's buffer starts at 8: 6 and 7 were applied before any sign, waived
    assert.equal(log.reachedBack(8), true);
    assert.equal(log.firstUnconfirmed(), 8);
    // a buffer that starts after a batch applied while suspect can never confirm it
    assert.equal(log.reachedBack(11), false);
    assert.equal(log.confirmedThrough(9), true, "8 and 9 were applied before the sign");
    assert.equal(log.confirmedThrough(10), false);
    for (let s = 10; s <= 11; s++)
      assert.equal(
        log.check(s, storeBatch(s + 1), () => true),
        "match",
      );
    assert.equal(log.confirmedThrough(11), true);
  });

  it("is bounded: unconfirmed entries pushed out mark it overflowed; a drop starts it over", () => {
    const log = new SuspectLog(8, 0);
    log.begin();
    for (let s = 0; s < 8; s++) log.note(s, storeBatch(s));
    assert.equal(
      log.check(0, storeBatch(0), () => true),
      "match",
    );
    log.note(8, storeBatch(8)); // room made by the confirmed head
    assert.equal(log.overflowed, false);
    log.note(9, storeBatch(9));
    assert.equal(log.overflowed, true);
    assert.equal(log.unconfirmed(), 8);
    log.reset();
    assert.equal(log.overflowed, false);
    assert.equal(log.firstUnconfirmed(), null);
    log.note(20, storeBatch(20));
    assert.equal(log.firstUnconfirmed(), 20);
    log.end();
    assert.equal(log.isActive(), false);
  });
});
