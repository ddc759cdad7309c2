/**
 * Loaded before every test file (scripts/run-tests.mjs passes it with --import):
 * - properties run from a fixed seed, so `npm test` checks the same cases on every run and a CI
 *   failure reproduces anywhere; `KVSYNC_FC_SEED=random` (or a number) explores other cases;
 * - a failing property reports the assertion that failed next to its counterexample, seed and
 *   path (the path replays just that case: `{ seed, path, endOnFailure: true }`).
 * Properties that pass their own `seed` keep it.
 */
import fc from "fast-check";

const FIXED_SEED = 20261122;
const env = process.env.KVSYNC_FC_SEED;
const seed = env === undefined || env === "" ? FIXED_SEED : env === "random" ? undefined : Number(env);
if (seed !== undefined && !Number.isInteger(seed))
  throw new Error(`KVSYNC_FC_SEED: an integer or "random", got ${env}`);

fc.configureGlobal(
  seed === undefined ? { includeErrorInReport: true } : { includeErrorInReport: true, seed },
);
