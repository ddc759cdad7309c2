import { InvalidArgumentError, Option } from "commander";

/** A CLI flag with its env-var twin (`KVSYNC_*`), shown in `--help`. */
export function opt(flags: string, description: string, env: string, defaultValue?: unknown): Option {
  const o = new Option(flags, description).env(env);
  if (defaultValue !== undefined) o.default(defaultValue);
  return o;
}

export function parseIntArg(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`not an integer: ${value}`);
  return n;
}

export function parseFloatArg(value: string): number {
  const n = Number(value);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`not a number: ${value}`);
  return n;
}

/** For repeatable flags: `--x a --x b` gives ["a", "b"]. */
export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}
