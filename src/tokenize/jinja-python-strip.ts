/**
 * Makes `@huggingface/jinja` strip strings the way Python's jinja2 does. The library's
 * `s.strip(chars)`, `s.lstrip(chars)`, `s.rstrip(chars)` and `s | trim(chars)` ignore `chars` and
 * trim JS whitespace; vLLM's jinja2 calls Python's `str.strip(chars)`. Qwen3's template strips
 * `'\n'` around `</think>`, so content with spaces next to those newlines rendered differently
 * from vLLM (other token ids, other block hashes).
 *
 * The parsed program is rewritten once, after parsing: each such call becomes a call of a
 * function the render context supplies under a reserved name (`STRIP_FN`), with the receiver and
 * the side as its first two arguments. The library is not patched.
 */
import type { Template } from "@huggingface/jinja";
import { pyStripChars, type StripSide } from "./py-str.ts";

/** The render-context name of the strip function (chat.ts sets it after the request's kwargs). */
export const STRIP_FN = "__kvsync_py_strip";

const SIDES: ReadonlySet<string> = new Set(["strip", "lstrip", "rstrip"]);

interface Node {
  type: string;
  [key: string]: unknown;
}

const isNode = (v: unknown): v is Node =>
  v !== null && typeof v === "object" && typeof (v as { type?: unknown }).type === "string";

const identifier = (value: string): Node => ({ type: "Identifier", value });
const stringLiteral = (value: string): Node => ({ type: "StringLiteral", value });

/** Rewrites `node` in place when it is a strip call; returns whether it did. */
function rewrite(node: Node): boolean {
  if (node.type === "CallExpression") {
    const callee = node.callee as Node;
    if (callee.type !== "MemberExpression" || callee.computed === true) return false;
    const prop = callee.property as Node;
    if (prop.type !== "Identifier" || !SIDES.has(prop.value as string)) return false;
    node.args = [callee.object, stringLiteral(prop.value as string), ...(node.args as Node[])];
    node.callee = identifier(STRIP_FN);
    return true;
  }
  if (node.type === "FilterExpression") {
    // `x | trim` and `x | trim(chars)`: jinja2's trim is `str.strip(chars)`
    const filter = node.filter as Node;
    let extra: Node[];
    if (filter.type === "Identifier" && filter.value === "trim") extra = [];
    else if (
      filter.type === "CallExpression" &&
      (filter.callee as Node).type === "Identifier" &&
      (filter.callee as Node).value === "trim"
    )
      extra = filter.args as Node[];
    else return false;
    const operand = node.operand;
    for (const k of Object.keys(node)) delete node[k];
    Object.assign(node, {
      type: "CallExpression",
      callee: identifier(STRIP_FN),
      args: [operand, stringLiteral("strip"), ...extra],
    });
    return true;
  }
  return false;
}

function walk(value: unknown): void {
  if (Array.isArray(value)) {
    for (const v of value) walk(v);
    return;
  }
  if (value instanceof Map) {
    for (const [k, v] of value) {
      walk(k);
      walk(v);
    }
    return;
  }
  if (!isNode(value)) return;
  rewrite(value);
  // the receiver and the arguments may hold strip calls themselves (`a.strip().rstrip('x')`)
  for (const k of Object.keys(value)) if (k !== "type") walk(value[k]);
}

/** Rewrites the strip calls of a parsed template (call once, right after `new Template`). */
export function usePythonStrip(template: Template): void {
  walk((template as unknown as { parsed: unknown }).parsed);
}

/**
 * The function behind `STRIP_FN`. The library hands it the plain values of its arguments: the
 * receiver, the side, then the template's own arguments (a keyword-argument map arrives as a Map).
 * Errors mirror Python's TypeErrors, except for an undefined `chars` (see below).
 */
export function pythonStrip(receiver: unknown, side: unknown, ...args: unknown[]): string {
  const name = side as StripSide;
  if (typeof receiver !== "string") {
    throw new Error(`'${name}' is only supported on strings here, got ${describe(receiver)}`);
  }
  if (args.length > 1) throw new Error(`${name} expected at most 1 argument, got ${args.length}`);
  if (args.length === 0) return pyStripChars(receiver, name, null);
  // the library hands over none and an undefined variable alike (both as undefined), so an
  // undefined `chars` strips whitespace here where jinja2 raises a TypeError: such a template
  // fails in vLLM anyway, and nothing valid renders differently
  const chars = args[0];
  if (chars !== null && chars !== undefined && typeof chars !== "string") {
    throw new Error(`${name} arg must be None or str, got ${describe(chars)}`);
  }
  return pyStripChars(receiver, name, chars);
}

function describe(v: unknown): string {
  if (v === undefined) return "undefined";
  if (v === null) return "none";
  if (v instanceof Map) return "keyword arguments";
  return Array.isArray(v) ? "list" : typeof v;
}
