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

/** Parses a boolean flag value: 0/false/no/off/"" are false, anything else true. */
export function parseBoolArg(value: string | boolean | undefined): boolean {
  if (typeof value === "boolean") return value; // commander passes the preset through the parser
  return value === undefined || !["0", "false", "no", "off", ""].includes(value.trim().toLowerCase());
}

/**
 * A boolean flag with an env-var twin that honours the variable's value (`KVSYNC_X=false` is
 * off): commander's plain boolean flags turn on whenever the variable is set, whatever it says.
 * `--x` alone is true, `--x false` is false.
 */
export function flagOpt(flag: string, description: string, env: string, defaultValue = false): Option {
  return opt(`${flag} [bool]`, description, env, defaultValue).argParser(parseBoolArg).preset(true);
}

/** Parser for a flag taking one of `values` (a clean commander usage error otherwise). */
export function parseChoice<T extends string>(values: readonly T[]): (value: string) => T {
  return (value) => {
    if (!(values as readonly string[]).includes(value))
      throw new InvalidArgumentError(`expected one of ${values.join(", ")}, got ${value}`);
    return value as T;
  };
}
