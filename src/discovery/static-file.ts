import { type FSWatcher, watch } from "node:fs";
import { readFile } from "node:fs/promises";
import { basename, dirname, extname, resolve } from "node:path";
import type { Registry } from "prom-client";
import YAML from "yaml";
import { createLogger, type Logger } from "../util/log.ts";
import { type DiscoveryMetrics, discoveryMetrics } from "./metrics.ts";
import type { DiscoveryEvent, DiscoverySource, PodInfo } from "./types.ts";

/** Most engines one file may list (bounded memory, and a guard against a runaway generator). */
export const MAX_ENGINES = 10_000;
const MAX_FILE_BYTES = 16 * 1024 * 1024;
const MAX_DP = 1024;

const KNOWN_FIELDS = new Set([
  "name",
  "model",
  "http",
  "events",
  "replay",
  "loras",
  "dataParallelSize",
  "dataParallelStartRank",
  "ready",
  "blockSize",
]);

/** An engines file that cannot be used; the message names the file, the entry and the field. */
export class EnginesFileError extends Error {
  override readonly name = "EnginesFileError";
  constructor(
    readonly file: string,
    readonly detail: string,
    readonly entry?: number,
    readonly entryName?: string,
    readonly field?: string,
  ) {
    let where = file;
    if (entry !== undefined) where += `: engines[${entry}]${entryName ? ` (${entryName})` : ""}`;
    if (field !== undefined) where += ` field "${field}"`;
    super(`${where}: ${detail}`);
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function checkUrl(value: string, protocols: string[]): string | null {
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    return `not a URL: ${JSON.stringify(value)}`;
  }
  if (!protocols.includes(u.protocol)) {
    return `expected a ${protocols.map((p) => `${p}//`).join(" or ")} URL, got ${JSON.stringify(value)}`;
  }
  if (u.protocol !== "ipc:" && u.hostname === "") return `no host in ${JSON.stringify(value)}`;
  if (u.protocol === "tcp:" && u.port === "") return `no port in ${JSON.stringify(value)}`;
  return null;
}

/**
 * Parse and validate the text of an engines file (JSON or YAML). `file` is used in messages
 * and picks the parser (`.json` → JSON, anything else → YAML, which also reads JSON).
 * Throws `EnginesFileError` on the first problem.
 */
export function parseEnginesFile(text: string, file = "<engines>"): PodInfo[] {
  if (text.trim() === "") throw new EnginesFileError(file, "file is empty");
  let doc: unknown;
  try {
    if (extname(file).toLowerCase() === ".json") doc = JSON.parse(text);
    else {
      const parsed = YAML.parseDocument(text, { uniqueKeys: true });
      if (parsed.errors.length > 0) throw parsed.errors[0];
      doc = parsed.toJS({ maxAliasCount: 100 });
    }
  } catch (err) {
    throw new EnginesFileError(file, `cannot parse: ${(err as Error).message.split("\n")[0]}`);
  }
  if (!isObject(doc)) throw new EnginesFileError(file, 'expected a mapping with an "engines" list');
  for (const k of Object.keys(doc)) {
    if (k !== "engines")
      throw new EnginesFileError(file, `unknown top-level key "${k}" (expected "engines")`);
  }
  const list = doc.engines;
  if (!Array.isArray(list)) {
    throw new EnginesFileError(
      file,
      `"engines" must be a list, got ${list === undefined ? "nothing" : typeof list}`,
    );
  }
  if (list.length > MAX_ENGINES) {
    throw new EnginesFileError(file, `too many engines: ${list.length} (max ${MAX_ENGINES})`);
  }
  const seen = new Map<string, number>();
  const pods: PodInfo[] = [];
  list.forEach((raw, i) => {
    pods.push(parseEntry(raw, i, file, seen));
  });
  return pods;
}

function parseEntry(raw: unknown, i: number, file: string, seen: Map<string, number>): PodInfo {
  if (!isObject(raw)) throw new EnginesFileError(file, "entry must be a mapping", i);
  const rawName = typeof raw.name === "string" ? raw.name : undefined;
  const fail = (field: string | undefined, detail: string): never => {
    throw new EnginesFileError(file, detail, i, rawName, field);
  };
  for (const k of Object.keys(raw)) {
    if (!KNOWN_FIELDS.has(k)) fail(k, `unknown field (known: ${[...KNOWN_FIELDS].join(", ")})`);
  }
  const str = (field: string): string => {
    const v = raw[field];
    if (v === undefined || v === null) return fail(field, "missing (required)");
    if (typeof v !== "string" || v.trim() === "") return fail(field, "must be a non-empty string");
    return v.trim();
  };
  const name = str("name");
  const prev = seen.get(name);
  if (prev !== undefined) fail("name", `duplicate name, already used by engines[${prev}]`);
  seen.set(name, i);
  const model = str("model");
  const http = str("http").replace(/\/+$/, "");
  const httpErr = checkUrl(http, ["http:", "https:"]);
  if (httpErr) fail("http", httpErr);

  let events: string | null;
  if (!("events" in raw)) {
    return fail("events", "missing (required; use null for an engine that publishes no KV events)");
  }
  if (raw.events === null) events = null;
  else {
    if (typeof raw.events !== "string")
      return fail("events", "must be a string such as tcp://host:5557, or null");
    events = raw.events.trim();
    const e = checkUrl(events, ["tcp:", "ipc:"]);
    if (e) fail("events", e);
  }
  let replay: string | null = null;
  if (raw.replay !== undefined && raw.replay !== null) {
    if (typeof raw.replay !== "string") return fail("replay", "must be a string such as tcp://host:5558");
    replay = raw.replay.trim();
    const e = checkUrl(replay, ["tcp:", "ipc:"]);
    if (e) fail("replay", e);
    if (events === null) fail("replay", "set without events");
  }
  let loras: string[] = [];
  if (raw.loras !== undefined && raw.loras !== null) {
    if (!Array.isArray(raw.loras)) return fail("loras", "must be a list of adapter names");
    loras = raw.loras.map((l, j) => {
      if (typeof l !== "string" || l.trim() === "")
        return fail("loras", `item ${j} must be a non-empty string`);
      return l.trim();
    });
    if (new Set(loras).size !== loras.length) fail("loras", "duplicate adapter name");
  }
  const posInt = (field: string, max: number): number | undefined => {
    const v = raw[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > max) {
      return fail(field, `must be an integer from 1 to ${max}, got ${JSON.stringify(v)}`);
    }
    return v;
  };
  const dataParallelSize = posInt("dataParallelSize", MAX_DP) ?? 1;
  const blockSize = posInt("blockSize", 1 << 20);
  let startRank: number | undefined;
  const sr = raw.dataParallelStartRank;
  if (sr !== undefined && sr !== null) {
    if (typeof sr !== "number" || !Number.isInteger(sr) || sr < 0 || sr > 65535)
      fail("dataParallelStartRank", `must be an integer from 0 to 65535, got ${JSON.stringify(sr)}`);
    startRank = sr as number;
  }
  let ready = true;
  if (raw.ready !== undefined && raw.ready !== null) {
    if (typeof raw.ready !== "boolean") fail("ready", "must be true or false");
    ready = raw.ready as boolean;
  }
  const pod: PodInfo = { name, model, loras, http, events, replay, dataParallelSize, ready };
  if (blockSize !== undefined) pod.blockSize = blockSize;
  if (startRank !== undefined && startRank > 0) pod.dataParallelStartRank = startRank;
  return pod;
}

/** The text of an engines file; a missing, unreadable or oversized file is an `EnginesFileError`. */
async function readEnginesText(path: string): Promise<string> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw new EnginesFileError(path, e.code === "ENOENT" ? "file not found" : `cannot read: ${e.message}`);
  }
  if (buf.length > MAX_FILE_BYTES)
    throw new EnginesFileError(path, `file larger than ${MAX_FILE_BYTES} bytes`);
  return buf.toString("utf8");
}

/** Read and validate an engines file. */
export async function loadEnginesFile(path: string): Promise<PodInfo[]> {
  return parseEnginesFile(await readEnginesText(path), path);
}

export interface StaticFileSourceOptions {
  /** path of the engines file */
  file: string;
  /** quiet period after the last change before reloading (editors write in several steps) */
  debounceMs?: number;
  /** also re-read every N ms, for filesystems where fs.watch misses changes (0 = off) */
  pollIntervalMs?: number;
  registry?: Registry;
  logger?: Logger;
}

/**
 * `--engines <file>`: the pods listed in a JSON/YAML file. Watches the file's directory (so an
 * editor's write-to-temp-then-rename, or a Kubernetes ConfigMap's symlink swap, is seen),
 * debounces, re-reads and reports the new set as a `sync`. A bad or missing file is logged
 * (`discovery.file_invalid`), counted, and the last good set stays in use (`degraded()` is
 * true until the file is good again). The first load must succeed: `start` throws otherwise.
 */
export class StaticFileSource implements DiscoverySource {
  readonly kind = "static";
  readonly file: string;
  private readonly debounceMs: number;
  private readonly pollIntervalMs: number;
  private readonly log: Logger;
  private readonly metrics: DiscoveryMetrics | null;
  private onEvent: ((ev: DiscoveryEvent) => void) | null = null;
  private watcher: FSWatcher | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private poll: NodeJS.Timeout | null = null;
  private lastText: string | null = null;
  private current: PodInfo[] = [];
  private bad = false;
  private stopped = false;
  private reloading: Promise<void> | null = null;
  private again = false;
  private failures = 0;
  private successes = 0;
  private lastErr: Error | null = null;
  private readonly waiters: Array<() => void> = [];

  constructor(opts: StaticFileSourceOptions) {
    this.file = resolve(opts.file);
    this.debounceMs = opts.debounceMs ?? 100;
    this.pollIntervalMs = opts.pollIntervalMs ?? 5000;
    this.log = opts.logger ?? createLogger("discovery");
    this.metrics = opts.registry ? discoveryMetrics(opts.registry) : null;
  }

  /** Reloads that failed (bad or missing file) since start. */
  get reloadFailures(): number {
    return this.failures;
  }

  /** Successful loads (including the first) since start. */
  get reloads(): number {
    return this.successes;
  }

  /** The error of the last failed reload while the file is still bad, else null. */
  get lastError(): Error | null {
    return this.bad ? this.lastErr : null;
  }

  /** The last good set. */
  pods(): PodInfo[] {
    return [...this.current];
  }

  degraded(): boolean {
    return this.bad;
  }

  async start(onEvent: (ev: DiscoveryEvent) => void): Promise<void> {
    if (this.onEvent) throw new Error("StaticFileSource already started");
    this.onEvent = onEvent;
    this.stopped = false;
    const text = await readEnginesText(this.file);
    const pods = parseEnginesFile(text, this.file);
    this.lastText = text;
    this.accept(pods);
    this.watcher = watch(dirname(this.file), { persistent: false }, (_type, filename) => {
      // Any change in the directory may be ours (rename-on-save, ConfigMap `..data` swaps);
      // the content comparison after the debounce filters the rest.
      if (filename && !this.relevant(filename.toString())) return;
      this.schedule();
    });
    this.watcher.on("error", (err) => {
      this.log.warn(
        { event: "discovery.watch_error", file: this.file, err },
        "watching the engines file failed",
      );
      this.metrics?.errors.inc({ source: this.kind, reason: "watch" });
    });
    if (this.pollIntervalMs > 0) {
      this.poll = setInterval(() => this.schedule(0), this.pollIntervalMs);
      this.poll.unref();
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.debounce) clearTimeout(this.debounce);
    if (this.poll) clearInterval(this.poll);
    this.debounce = null;
    this.poll = null;
    if (this.reloading) await this.reloading;
    this.onEvent = null;
    for (const w of this.waiters.splice(0)) w();
  }

  /** Re-read the file now (also what the watcher does after the debounce). */
  async reload(): Promise<void> {
    if (this.reloading) {
      this.again = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      do {
        this.again = false;
        await this.reloadOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.reloading = null;
    });
    return this.reloading;
  }

  /** Resolves after the next reload attempt finishes (good or bad); for tests and tools. */
  nextReload(): Promise<void> {
    return new Promise((r) => this.waiters.push(r));
  }

  private relevant(filename: string): boolean {
    const base = basename(this.file);
    return filename === base || filename.startsWith("..") || filename.includes(base);
  }

  private schedule(delay = this.debounceMs): void {
    if (this.stopped) return;
    if (this.debounce) clearTimeout(this.debounce);
    this.debounce = setTimeout(() => {
      this.debounce = null;
      void this.reload();
    }, delay);
  }

  private async reloadOnce(): Promise<void> {
    try {
      const text = await readEnginesText(this.file);
      if (this.stopped) return;
      if (text === this.lastText && !this.bad) return;
      const pods = parseEnginesFile(text, this.file);
      if (this.stopped) return;
      this.lastText = text;
      if (this.bad) {
        this.log.info({ event: "discovery.file_recovered", file: this.file }, "engines file is valid again");
      }
      this.accept(pods);
    } catch (err) {
      if (this.stopped) return;
      this.failures++;
      this.lastErr = err as Error;
      this.lastText = null;
      this.setBad(true);
      this.metrics?.errors.inc({ source: this.kind, reason: "invalid_file" });
      this.metrics?.reloads.inc({ source: this.kind, result: "error" });
      this.log.error(
        {
          event: "discovery.file_invalid",
          file: this.file,
          err: (err as Error).message,
          kept: this.current.length,
        },
        `engines file rejected, keeping the last good set of ${this.current.length} engines: ${(err as Error).message}`,
      );
    } finally {
      for (const w of this.waiters.splice(0)) w();
    }
  }

  private accept(pods: PodInfo[]): void {
    this.current = pods;
    this.successes++;
    this.setBad(false);
    this.metrics?.reloads.inc({ source: this.kind, result: "ok" });
    this.metrics?.pods.set({ source: this.kind }, pods.length);
    this.metrics?.readyPods.set({ source: this.kind }, pods.filter((p) => p.ready).length);
    this.log.info(
      { event: "discovery.file_loaded", file: this.file, engines: pods.length },
      `engines file loaded: ${pods.length} engines`,
    );
    this.onEvent?.({ type: "sync", pods: pods.map((p) => ({ ...p, loras: [...p.loras] })) });
  }

  private setBad(bad: boolean): void {
    this.bad = bad;
    this.metrics?.degraded.set({ source: this.kind }, bad ? 1 : 0);
  }
}
