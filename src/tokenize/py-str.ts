/**
 * Python's `str.strip` / `lstrip` / `rstrip`, exactly: vLLM renders chat templates with Python's
 * jinja2, where `s.strip('\n')` removes only newlines and `s.strip()` removes the characters for
 * which `str.isspace()` is true. JS `trim()` differs in both ways: it has no character argument,
 * and its whitespace set adds U+FEFF and lacks U+001C–U+001F and U+0085.
 */

/** Python `str.isspace()` characters. */
const PY_WS =
  "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_LSTRIP = new RegExp(`^[${PY_WS}]+`);
const PY_RSTRIP = new RegExp(`[${PY_WS}]+$`);

export type StripSide = "strip" | "lstrip" | "rstrip";

/** `s.lstrip()` with no argument. */
export const pyLstrip = (s: string): string => s.replace(PY_LSTRIP, "");
/** `s.rstrip()` with no argument. */
export const pyRstrip = (s: string): string => s.replace(PY_RSTRIP, "");
/** `s.strip()` with no argument. */
export const pyStrip = (s: string): string => pyRstrip(pyLstrip(s));

/** Code-point start of the part of `s` left after dropping leading code points in `set`. */
function leftEdge(s: string, set: ReadonlySet<number>): number {
  let i = 0;
  while (i < s.length) {
    const cp = s.codePointAt(i) as number;
    if (!set.has(cp)) break;
    i += cp > 0xffff ? 2 : 1;
  }
  return i;
}

/** End (exclusive) of `s` after dropping trailing code points in `set`, never below `start`. */
function rightEdge(s: string, set: ReadonlySet<number>, start: number): number {
  let j = s.length;
  while (j > start) {
    let cp = s.charCodeAt(j - 1);
    let width = 1;
    // a low surrogate preceded by a high one is one astral code point, as Python sees it
    if (cp >= 0xdc00 && cp <= 0xdfff && j - 2 >= start) {
      const hi = s.charCodeAt(j - 2);
      if (hi >= 0xd800 && hi <= 0xdbff) {
        cp = (hi - 0xd800) * 0x400 + (cp - 0xdc00) + 0x10000;
        width = 2;
      }
    }
    if (!set.has(cp)) break;
    j -= width;
  }
  return j;
}

/**
 * `s.<side>(chars)`: `chars` null/undefined strips Python whitespace, a string strips any of its
 * code points from the chosen end(s).
 */
export function pyStripChars(s: string, side: StripSide, chars: string | null | undefined): string {
  if (chars === null || chars === undefined) {
    if (side === "lstrip") return pyLstrip(s);
    if (side === "rstrip") return pyRstrip(s);
    return pyStrip(s);
  }
  if (chars === "") return s;
  const set = new Set<number>();
  for (const ch of chars) set.add(ch.codePointAt(0) as number);
  const start = side === "rstrip" ? 0 : leftEdge(s, set);
  const end = side === "lstrip" ? s.length : rightEdge(s, set, start);
  return start === 0 && end === s.length ? s : s.slice(start, end);
}

/** `s.lstrip('\n')` (the direct renderers' hot path: no Set, no regex). */
export function lstripNewlines(s: string): string {
  let i = 0;
  while (i < s.length && s.charCodeAt(i) === 10) i++;
  return i === 0 ? s : s.slice(i);
}

/** `s.rstrip('\n')`. */
export function rstripNewlines(s: string): string {
  let j = s.length;
  while (j > 0 && s.charCodeAt(j - 1) === 10) j--;
  return j === s.length ? s : s.slice(0, j);
}
