import assert from "node:assert/strict";
import { test } from "node:test";
import { blockKeys, chainHash, namespaceSeed } from "../../../src/index/index.ts";

const NS = { model: "m", lora: null, blockSize: 16 };

test("chain hash is deterministic and chains: key_i depends on every earlier block", () => {
  const t = Array.from({ length: 64 }, (_, i) => i * 7 + 1);
  const a = blockKeys(NS, t);
  assert.equal(a.length, 8);
  assert.deepEqual(blockKeys(NS, t), a);
  const t2 = t.slice();
  t2[3] += 1; // change one token of block 0: every key changes
  const b = blockKeys(NS, t2);
  for (let i = 0; i < 4; i++) assert.notDeepEqual([b[2 * i], b[2 * i + 1]], [a[2 * i], a[2 * i + 1]]);
  // change in block 2 only: keys 0 and 1 unchanged
  const t3 = t.slice();
  t3[40] ^= 1;
  const c = blockKeys(NS, t3);
  assert.deepEqual([c[0], c[1], c[2], c[3]], [a[0], a[1], a[2], a[3]]);
  assert.notDeepEqual([c[4], c[5]], [a[4], a[5]]);
  // the step function matches blockKeys
  const seed = new Int32Array(2);
  namespaceSeed(NS, seed);
  const out = new Int32Array(2);
  chainHash(seed[0], seed[1], a[0], a[1], t, 16, 16, out);
  assert.deepEqual([out[0], out[1]], [a[2], a[3]]);
});

test("namespaces separate keys: model, LoRA (null vs name), block size", () => {
  const t = Array.from({ length: 16 }, (_, i) => i);
  const keys = [
    blockKeys(NS, t),
    blockKeys({ ...NS, model: "m2" }, t),
    blockKeys({ ...NS, lora: "x" }, t),
    blockKeys({ ...NS, lora: "" }, t),
    blockKeys({ ...NS, blockSize: 8 }, t).slice(0, 2),
  ].map((k) => `${k[0]},${k[1]}`);
  assert.equal(new Set(keys).size, keys.length);
});

test("no collisions among 300k random blocks; both lanes carry entropy", () => {
  const seen = new Set<string>();
  const inputs = new Set<string>();
  const hi = new Set<number>();
  const lo = new Set<number>();
  const seed = new Int32Array(2);
  namespaceSeed(NS, seed);
  const out = new Int32Array(2);
  const toks = new Int32Array(16);
  let x = 12345;
  for (let i = 0; i < 300_000; i++) {
    // structured inputs: small token ids, sequences differing in few positions
    for (let j = 0; j < 16; j++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      toks[j] = j < 14 ? (x >>> 16) % 8 : (x >>> 8) % 151_000;
    }
    inputs.add(`${i & 3}:${toks.join(",")}`);
    chainHash(seed[0], seed[1], i & 3, 0, toks, 0, 16, out);
    seen.add(`${out[0]},${out[1]}`);
    hi.add(out[0]);
    lo.add(out[1]);
  }
  // duplicates in the *input* are possible (small alphabet): keys must be exactly as many as inputs
  assert.equal(seen.size, inputs.size);
  assert.ok(inputs.size > 290_000, `distinct inputs ${inputs.size}`);
  // each 32-bit lane alone: ~10 expected birthday collisions among 300k values
  assert.ok(hi.size > inputs.size - 100 && lo.size > inputs.size - 100, `${hi.size} ${lo.size}`);
});
