/**
 * The two sides of an A/B between versions of src/ (bench/ab's runners): each side is a
 * directory under .tmp/ab/<runner> holding that version's src/ (and web/, which the admin dashboard reads
 * beside it), inside the project so its imports resolve the project's node_modules.
 */
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
export const WORK = join(ROOT, ".tmp", "ab");

export interface Side {
  name: "base" | "head";
  /** a git revision, or "worktree" (the working tree, copied when the run starts) */
  rev: string;
  dir: string;
}

/** the folders of the tree a side runs from */
const TREES = ["src", "web"];

/** a directory holding the side's tree, made anew; each runner has its own, so two can run at once */
export function materialise(runner: string, name: Side["name"], rev: string): Side {
  const dir = join(WORK, runner, name);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  if (rev === "worktree") {
    for (const t of TREES)
      if (existsSync(join(ROOT, t))) cpSync(join(ROOT, t), join(dir, t), { recursive: true });
  } else {
    const listed = execFileSync("git", ["-C", ROOT, "ls-tree", "--name-only", rev], { encoding: "utf8" });
    const have = TREES.filter((t) => listed.split("\n").includes(t));
    const tar = execFileSync("git", ["-C", ROOT, "archive", rev, ...have], { maxBuffer: 1 << 30 });
    execFileSync("tar", ["-x", "-C", dir], { input: tar });
  }
  return { name, rev, dir };
}

export interface Spread {
  min: number;
  median: number;
  max: number;
}

export function spread(xs: readonly number[]): Spread {
  const s = [...xs].sort((a, b) => a - b);
  return { min: s[0]!, median: s[s.length >> 1]!, max: s[s.length - 1]! };
}

/** geometric mean (ratios of several datasets in one figure) */
export function geomean(xs: readonly number[]): number {
  return Math.exp(xs.reduce((a, x) => a + Math.log(x), 0) / xs.length);
}
