/**
 * Loaded before every test file (scripts/run-tests.mjs passes it with --import): a failing
 * property then reports the assertion that failed next to its counterexample and seed, so a
 * failure in CI (random seeds) can be diagnosed from the log alone.
 */
import fc from "fast-check";

fc.configureGlobal({ includeErrorInReport: true });
