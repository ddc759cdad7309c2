/**
 * A fake Kubernetes API server for pods, over real HTTP, for tests and the E2E harness.
 *
 * It serves what an informer needs, the way the API server does:
 * - `GET /api/v1/pods` and `GET /api/v1/namespaces/{ns}/pods` (PodList with a resourceVersion),
 *   `GET /api/v1/namespaces/{ns}/pods/{name}`, with `labelSelector` (=, ==, !=, exists, !exists,
 *   in, notin);
 * - `?watch=1|true`: a chunked stream of JSON lines `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR",
 *   "object":{...}}`, starting after `resourceVersion` (replaying the retained history), or with
 *   synthetic ADDED events for everything when no/“0” resourceVersion is given; an object that
 *   stops matching the selector is sent as DELETED and one that starts matching as ADDED;
 *   `allowWatchBookmarks=true` gets periodic BOOKMARKs; `timeoutSeconds` ends the stream;
 * - a resourceVersion older than the retained history gets 410 Gone, as an ERROR watch event
 *   (`{"kind":"Status","code":410,"reason":"Expired"}`, then the stream ends) or as HTTP 410;
 * - bearer-token auth when a token is set (401 otherwise).
 *
 * Fault knobs: `dropWatches()`, `expireWatches()`, `compact()`, `setLatency(ms)`,
 * `failRequests(status)`, `refuseConnections()`, `heal()`.
 *
 * Drive it like a kubelet/controller:
 * ```ts
 * const api = await startFakeKubeApi();
 * api.upsertPod("ns1", makePod({ namespace: "ns1", name: "p0", model: "m", ip: "10.0.0.1" }));
 * api.setPodReady("ns1", "p0", false);
 * api.deletePod("ns1", "p0");
 * const kubeconfig = api.kubeconfigPath(); // or api.kubeConfig()
 * await api.close();
 * ```
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { KubeConfig, type V1Pod } from "@kubernetes/client-node";

export type { V1Pod };

// ---------------------------------------------------------------- pod builders

export interface MakePodOptions {
  namespace?: string;
  name: string;
  /** `model.aibrix.ai/name` label */
  model?: string;
  /** pod IP; absent = Pending, no address */
  ip?: string;
  /** Ready condition (default true when an IP is given) */
  ready?: boolean;
  /** `model.aibrix.ai/kv-events-enabled=true` label (default true) */
  kvEvents?: boolean;
  /** `model.aibrix.ai/lora-id` label */
  loraId?: string;
  /** `kvsync.io/lora-adapters` annotation */
  loraAdapters?: string[];
  httpPort?: number;
  eventsPort?: number | "none";
  replayPort?: number | "none";
  dataParallelSize?: number;
  blockSize?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  phase?: string;
}

/** A pod object with the AIBrix labels, kvsync's annotations, a Ready condition and an IP. */
export function makePod(o: MakePodOptions): V1Pod {
  const labels: Record<string, string> = {};
  if (o.kvEvents !== false) labels["model.aibrix.ai/kv-events-enabled"] = "true";
  if (o.model !== undefined) labels["model.aibrix.ai/name"] = o.model;
  if (o.loraId !== undefined) labels["model.aibrix.ai/lora-id"] = o.loraId;
  Object.assign(labels, o.labels ?? {});
  const annotations: Record<string, string> = {};
  if (o.loraAdapters) annotations["kvsync.io/lora-adapters"] = o.loraAdapters.join(",");
  if (o.httpPort !== undefined) annotations["kvsync.io/http-port"] = String(o.httpPort);
  if (o.eventsPort !== undefined) annotations["kvsync.io/kv-events-port"] = String(o.eventsPort);
  if (o.replayPort !== undefined) annotations["kvsync.io/kv-replay-port"] = String(o.replayPort);
  if (o.dataParallelSize !== undefined)
    annotations["kvsync.io/data-parallel-size"] = String(o.dataParallelSize);
  if (o.blockSize !== undefined) annotations["kvsync.io/block-size"] = String(o.blockSize);
  Object.assign(annotations, o.annotations ?? {});
  const ready = o.ready ?? o.ip !== undefined;
  const pod: V1Pod = {
    apiVersion: "v1",
    kind: "Pod",
    metadata: { name: o.name, namespace: o.namespace ?? "default", labels, annotations },
    spec: { containers: [{ name: "engine", image: "kvsync:dev" }] },
    status: {
      phase: o.phase ?? (o.ip ? "Running" : "Pending"),
      conditions: [{ type: "Ready", status: ready ? "True" : "False" }],
    },
  };
  if (o.ip) {
    pod.status!.podIP = o.ip;
    pod.status!.podIPs = [{ ip: o.ip }];
  }
  return pod;
}

// ---------------------------------------------------------------- label selectors

type Requirement =
  | { op: "eq" | "neq"; key: string; value: string }
  | { op: "in" | "notin"; key: string; values: string[] }
  | { op: "exists" | "notexists"; key: string };

/** Parse a label selector (`a=b,c!=d,e,!f,g in (x,y),h notin (z)`). Throws on bad syntax. */
export function parseLabelSelector(sel: string): Requirement[] {
  const parts: string[] = [];
  let depth = 0;
  let cur = "";
  for (const ch of sel) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      parts.push(cur);
      cur = "";
    } else cur += ch;
  }
  if (cur.trim() !== "" || parts.length > 0) parts.push(cur);
  const reqs: Requirement[] = [];
  for (const raw of parts) {
    const p = raw.trim();
    if (p === "") throw new Error(`empty requirement in selector ${JSON.stringify(sel)}`);
    let m = /^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(p);
    if (m) {
      reqs.push({
        op: m[2] as "in" | "notin",
        key: m[1],
        values: m[3]
          .split(",")
          .map((v) => v.trim())
          .filter((v) => v !== ""),
      });
      continue;
    }
    m = /^([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)$/.exec(p);
    if (m) {
      reqs.push({ op: m[2] === "!=" ? "neq" : "eq", key: m[1], value: m[3] });
      continue;
    }
    m = /^(!?)([\w./-]+)$/.exec(p);
    if (m) {
      reqs.push({ op: m[1] ? "notexists" : "exists", key: m[2] });
      continue;
    }
    throw new Error(`bad label selector requirement ${JSON.stringify(p)}`);
  }
  return reqs;
}

export function selectorMatches(reqs: Requirement[], labels: Record<string, string> | undefined): boolean {
  const l = labels ?? {};
  for (const r of reqs) {
    const has = Object.hasOwn(l, r.key);
    const v = l[r.key];
    switch (r.op) {
      case "eq":
        if (!has || v !== r.value) return false;
        break;
      case "neq":
        if (has && v === r.value) return false;
        break;
      case "in":
        if (!has || !r.values.includes(v)) return false;
        break;
      case "notin":
        if (has && r.values.includes(v)) return false;
        break;
      case "exists":
        if (!has) return false;
        break;
      case "notexists":
        if (has) return false;
        break;
    }
  }
  return true;
}

// ---------------------------------------------------------------- server

type EventType = "ADDED" | "MODIFIED" | "DELETED";

interface HistoryEntry {
  rv: number;
  type: EventType;
  namespace: string;
  /** object after the change (for DELETED: the last state, with the deletion's rv) */
  obj: V1Pod;
  /** labels before the change (MODIFIED), to turn selector transitions into ADDED/DELETED */
  prevLabels: Record<string, string> | undefined;
}

interface ActiveWatch {
  namespace: string | null;
  selector: Requirement[];
  res: ServerResponse;
  socket: Socket;
  bookmarks: boolean;
  bookmarkTimer: NodeJS.Timeout | null;
  timeoutTimer: NodeJS.Timeout | null;
  path: string;
}

export interface RequestRecord {
  method: string;
  path: string;
  watch: boolean;
  query: Record<string, string>;
  status: number;
}

export interface FakeKubeApiOptions {
  /** events kept for watch resumption (older resourceVersions get 410 Gone). Default 1000. */
  historyLimit?: number;
  /** bookmark period for watches that allow bookmarks (ms); 0 = only on `sendBookmarks()`. Default 1000. */
  bookmarkIntervalMs?: number;
  /** required bearer token; null = no auth. Default "fake-token". */
  token?: string | null;
  /** how a too-old watch resourceVersion is answered: an ERROR event (what the API server does) or HTTP 410 */
  goneAs?: "event" | "http";
  host?: string;
}

export interface FakeKubeApi {
  readonly url: string;
  readonly port: number;
  /** current resourceVersion */
  resourceVersion(): string;
  /** create or replace a pod (by namespace/name); returns the stored copy */
  upsertPod(namespace: string, pod: V1Pod): V1Pod;
  /** change a stored pod in place (MODIFIED event) */
  patchPod(namespace: string, name: string, fn: (pod: V1Pod) => void): V1Pod;
  setPodReady(namespace: string, name: string, ready: boolean): V1Pod;
  setPodIP(namespace: string, name: string, ip: string | null): V1Pod;
  setPodLabels(namespace: string, name: string, labels: Record<string, string | null>): V1Pod;
  /** set deletionTimestamp (graceful deletion begins; the object stays until deletePod) */
  markTerminating(namespace: string, name: string): V1Pod;
  /** remove a pod (DELETED event); false if it did not exist */
  deletePod(namespace: string, name: string): boolean;
  getPod(namespace: string, name: string): V1Pod | undefined;
  listPods(namespace?: string): V1Pod[];
  /** a kubeconfig file pointing at this server (written once, removed on close) */
  kubeconfigPath(): string;
  kubeConfig(): KubeConfig;
  // faults
  /** close every active watch stream (as a load balancer or API server restart would) */
  dropWatches(): number;
  /** forget history: every resourceVersion before now becomes too old (410 on resume) */
  compact(): void;
  /** send 410 Expired ERROR events to active watches and end them, and compact */
  expireWatches(): number;
  /** delay every response by `ms` before its headers */
  setLatency(ms: number): void;
  /** answer every request with this HTTP status (a Status body) until `heal()` */
  failRequests(status?: number): void;
  /** answer only watch requests with this status (lists keep working); null to stop */
  failWatchRequests(status: number | null): void;
  /** stop listening (connection refused) and cut open connections until `heal()` */
  refuseConnections(): Promise<void>;
  /** undo `setLatency`, `failRequests` and `refuseConnections` */
  heal(): Promise<void>;
  sendBookmarks(): void;
  activeWatches(): number;
  /** requests served (most recent last, bounded) */
  requests(): RequestRecord[];
  /** count of list (non-watch) and watch requests to the pod collection endpoints */
  counts(): { lists: number; watches: number; failed: number };
  close(): Promise<void>;
}

const clone = <T>(v: T): T => structuredClone(v);

function status(code: number, reason: string, message: string): object {
  return { kind: "Status", apiVersion: "v1", metadata: {}, status: "Failure", message, reason, code };
}

export async function startFakeKubeApi(opts: FakeKubeApiOptions = {}): Promise<FakeKubeApi> {
  const historyLimit = opts.historyLimit ?? 1000;
  const bookmarkIntervalMs = opts.bookmarkIntervalMs ?? 1000;
  const token = opts.token === undefined ? "fake-token" : opts.token;
  const goneAs = opts.goneAs ?? "event";
  const host = opts.host ?? "127.0.0.1";

  const pods = new Map<string, V1Pod>(); // "ns/name"
  let rv = 1;
  let uid = 0;
  const history: HistoryEntry[] = [];
  /** oldest resourceVersion a watch may resume from */
  let compactedRv = 1;
  const watches = new Set<ActiveWatch>();
  const sockets = new Set<Socket>();
  const reqLog: RequestRecord[] = [];
  const counters = { lists: 0, watches: 0, failed: 0 };
  let latencyMs = 0;
  let failStatus: number | null = null;
  let failWatchStatus: number | null = null;
  let refusing = false;
  let kubeconfigDir: string | null = null;
  let port = 0;
  let closed = false;

  const key = (ns: string, name: string) => `${ns}/${name}`;

  function record(entry: Omit<HistoryEntry, "rv">): number {
    rv++;
    const e: HistoryEntry = { ...entry, rv };
    e.obj.metadata = { ...e.obj.metadata, resourceVersion: String(rv) };
    history.push(e);
    while (history.length > historyLimit) {
      const old = history.shift()!;
      compactedRv = old.rv;
    }
    for (const w of watches) deliver(w, e);
    return rv;
  }

  function eventFor(w: ActiveWatch, e: HistoryEntry): { type: string; object: V1Pod } | null {
    if (w.namespace !== null && e.namespace !== w.namespace) return null;
    const now = selectorMatches(w.selector, e.obj.metadata?.labels);
    if (e.type === "MODIFIED") {
      const before = selectorMatches(w.selector, e.prevLabels);
      if (before && now) return { type: "MODIFIED", object: e.obj };
      if (before && !now) return { type: "DELETED", object: e.obj };
      if (!before && now) return { type: "ADDED", object: e.obj };
      return null;
    }
    return now ? { type: e.type, object: e.obj } : null;
  }

  function writeLine(w: ActiveWatch, ev: object): void {
    if (!w.res.writableEnded && !w.res.destroyed) w.res.write(`${JSON.stringify(ev)}\n`);
  }

  function deliver(w: ActiveWatch, e: HistoryEntry): void {
    const ev = eventFor(w, e);
    if (ev) writeLine(w, ev);
  }

  function bookmark(w: ActiveWatch): void {
    writeLine(w, {
      type: "BOOKMARK",
      object: { kind: "Pod", apiVersion: "v1", metadata: { resourceVersion: String(rv) } },
    });
  }

  function endWatch(w: ActiveWatch, destroy: boolean): void {
    if (w.bookmarkTimer) clearInterval(w.bookmarkTimer);
    if (w.timeoutTimer) clearTimeout(w.timeoutTimer);
    watches.delete(w);
    if (destroy) w.socket.destroy();
    else if (!w.res.writableEnded) w.res.end();
  }

  function send(res: ServerResponse, code: number, body: object): void {
    const text = JSON.stringify(body);
    res.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  }

  function logReq(r: RequestRecord): void {
    reqLog.push(r);
    if (reqLog.length > 1000) reqLog.shift();
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "http://x");
    const query = Object.fromEntries(url.searchParams);
    const isWatch = query.watch === "1" || query.watch === "true";
    const rec: RequestRecord = {
      method: req.method ?? "GET",
      path: url.pathname,
      watch: isWatch,
      query,
      status: 0,
    };
    logReq(rec);
    if (latencyMs > 0) {
      await new Promise((r) => setTimeout(r, latencyMs));
      if (res.destroyed || closed) return;
    }
    if (failStatus !== null) {
      counters.failed++;
      rec.status = failStatus;
      send(res, failStatus, status(failStatus, "InternalError", "fake API server: injected failure"));
      return;
    }
    if (token !== null && req.headers.authorization !== `Bearer ${token}`) {
      rec.status = 401;
      send(res, 401, status(401, "Unauthorized", "Unauthorized"));
      return;
    }
    if (req.method !== "GET") {
      rec.status = 405;
      send(res, 405, status(405, "MethodNotAllowed", "only GET is served"));
      return;
    }
    if (url.pathname === "/version") {
      rec.status = 200;
      send(res, 200, { major: "1", minor: "31", gitVersion: "v1.31.0-fake" });
      return;
    }
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/.exec(url.pathname);
    if (m && !isWatch) {
      const p = pods.get(key(decodeURIComponent(m[1]), decodeURIComponent(m[2])));
      rec.status = p ? 200 : 404;
      if (p) send(res, 200, p);
      else send(res, 404, status(404, "NotFound", `pods "${m[2]}" not found`));
      return;
    }
    let namespace: string | null = null;
    const nsMatch = /^\/api\/v1\/namespaces\/([^/]+)\/pods$/.exec(url.pathname);
    if (nsMatch) namespace = decodeURIComponent(nsMatch[1]);
    else if (url.pathname !== "/api/v1/pods") {
      rec.status = 404;
      send(
        res,
        404,
        status(404, "NotFound", `the server could not find the requested resource ${url.pathname}`),
      );
      return;
    }
    let selector: Requirement[];
    try {
      selector = parseLabelSelector(query.labelSelector ?? "");
    } catch (err) {
      rec.status = 400;
      send(res, 400, status(400, "BadRequest", (err as Error).message));
      return;
    }
    const matching = () =>
      [...pods.values()]
        .filter((p) => namespace === null || p.metadata?.namespace === namespace)
        .filter((p) => selectorMatches(selector, p.metadata?.labels))
        .sort((a, b) =>
          key(a.metadata!.namespace!, a.metadata!.name!).localeCompare(
            key(b.metadata!.namespace!, b.metadata!.name!),
          ),
        );

    if (!isWatch) {
      counters.lists++;
      rec.status = 200;
      send(res, 200, {
        kind: "PodList",
        apiVersion: "v1",
        metadata: { resourceVersion: String(rv) },
        items: matching(),
      });
      return;
    }

    counters.watches++;
    if (failWatchStatus !== null) {
      counters.failed++;
      rec.status = failWatchStatus;
      send(
        res,
        failWatchStatus,
        status(failWatchStatus, "InternalError", "fake API server: injected watch failure"),
      );
      return;
    }
    const fromRaw = query.resourceVersion ?? "";
    const from = fromRaw === "" || fromRaw === "0" ? null : Number(fromRaw);
    if (from !== null && (!Number.isInteger(from) || from < 0)) {
      rec.status = 400;
      send(res, 400, status(400, "BadRequest", `invalid resourceVersion ${fromRaw}`));
      return;
    }
    const expired = from !== null && from < compactedRv;
    if (expired && goneAs === "http") {
      rec.status = 410;
      send(res, 410, status(410, "Expired", `too old resource version: ${from} (${compactedRv})`));
      return;
    }
    rec.status = 200;
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    res.flushHeaders();
    const w: ActiveWatch = {
      namespace,
      selector,
      res,
      socket: req.socket,
      bookmarks: query.allowWatchBookmarks === "true" || query.allowWatchBookmarks === "1",
      bookmarkTimer: null,
      timeoutTimer: null,
      path: url.pathname,
    };
    if (expired) {
      writeLine(w, {
        type: "ERROR",
        object: status(410, "Expired", `too old resource version: ${from} (${compactedRv})`),
      });
      res.end();
      return;
    }
    watches.add(w);
    res.on("close", () => endWatch(w, false));
    if (from === null) {
      for (const p of matching()) writeLine(w, { type: "ADDED", object: p });
    } else {
      for (const e of history) if (e.rv > from) deliver(w, e);
    }
    if (w.bookmarks && bookmarkIntervalMs > 0) {
      w.bookmarkTimer = setInterval(() => bookmark(w), bookmarkIntervalMs);
      w.bookmarkTimer.unref();
    }
    const timeoutSeconds = Number(query.timeoutSeconds ?? "0");
    if (timeoutSeconds > 0) {
      w.timeoutTimer = setTimeout(() => endWatch(w, false), timeoutSeconds * 1000);
      w.timeoutTimer.unref();
    }
  }

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (!res.headersSent) send(res, 500, status(500, "InternalError", String(err)));
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 1000;
  server.on("connection", (s) => {
    if (refusing) {
      s.destroy();
      return;
    }
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  const url = `http://${host}:${port}`;

  function mustGet(ns: string, name: string): V1Pod {
    const p = pods.get(key(ns, name));
    if (!p) throw new Error(`fake kube api: no pod ${ns}/${name}`);
    return p;
  }

  function store(ns: string, next: V1Pod, prev: V1Pod | undefined): V1Pod {
    next.metadata = { ...next.metadata, namespace: ns };
    const name = next.metadata.name;
    if (!name) throw new Error("fake kube api: pod without metadata.name");
    if (prev) {
      next.metadata.uid = prev.metadata?.uid;
      next.metadata.creationTimestamp = prev.metadata?.creationTimestamp;
    } else {
      next.metadata.uid = `00000000-0000-4000-8000-${String(++uid).padStart(12, "0")}`;
      next.metadata.creationTimestamp = new Date();
    }
    pods.set(key(ns, name), next);
    record({
      type: prev ? "MODIFIED" : "ADDED",
      namespace: ns,
      obj: next,
      prevLabels: prev ? { ...(prev.metadata?.labels ?? {}) } : undefined,
    });
    return clone(next);
  }

  const api: FakeKubeApi = {
    url,
    get port() {
      return port;
    },
    resourceVersion: () => String(rv),
    upsertPod(ns, pod) {
      const prev = pods.get(key(ns, pod.metadata?.name ?? ""));
      return store(ns, clone(pod), prev);
    },
    patchPod(ns, name, fn) {
      const prev = mustGet(ns, name);
      const next = clone(prev);
      fn(next);
      if (next.metadata?.name !== name) throw new Error("fake kube api: patch must not rename");
      return store(ns, next, prev);
    },
    setPodReady(ns, name, ready) {
      return api.patchPod(ns, name, (p) => {
        p.status ??= {};
        const conds = (p.status.conditions ?? []).filter((c) => c.type !== "Ready");
        conds.push({ type: "Ready", status: ready ? "True" : "False" });
        p.status.conditions = conds;
      });
    },
    setPodIP(ns, name, ip) {
      return api.patchPod(ns, name, (p) => {
        p.status ??= {};
        if (ip === null) {
          delete p.status.podIP;
          delete p.status.podIPs;
        } else {
          p.status.podIP = ip;
          p.status.podIPs = [{ ip }];
          p.status.phase = "Running";
        }
      });
    },
    setPodLabels(ns, name, labels) {
      return api.patchPod(ns, name, (p) => {
        const l = { ...(p.metadata?.labels ?? {}) };
        for (const [k, v] of Object.entries(labels)) {
          if (v === null) delete l[k];
          else l[k] = v;
        }
        p.metadata!.labels = l;
      });
    },
    markTerminating(ns, name) {
      return api.patchPod(ns, name, (p) => {
        p.metadata!.deletionTimestamp = new Date();
        p.metadata!.deletionGracePeriodSeconds = 30;
      });
    },
    deletePod(ns, name) {
      const prev = pods.get(key(ns, name));
      if (!prev) return false;
      pods.delete(key(ns, name));
      record({ type: "DELETED", namespace: ns, obj: clone(prev), prevLabels: undefined });
      return true;
    },
    getPod: (ns, name) => {
      const p = pods.get(key(ns, name));
      return p ? clone(p) : undefined;
    },
    listPods: (ns) =>
      [...pods.values()].filter((p) => ns === undefined || p.metadata?.namespace === ns).map((p) => clone(p)),
    kubeconfigPath() {
      if (!kubeconfigDir) kubeconfigDir = mkdtempSync(join(tmpdir(), "fake-kube-"));
      const file = join(kubeconfigDir, "kubeconfig");
      const user = token === null ? {} : { token };
      const doc = {
        apiVersion: "v1",
        kind: "Config",
        // client-node only talks plain HTTP to a cluster marked insecure-skip-tls-verify
        clusters: [{ name: "fake", cluster: { server: url, "insecure-skip-tls-verify": true } }],
        users: [{ name: "fake", user }],
        contexts: [{ name: "fake", context: { cluster: "fake", user: "fake" } }],
        "current-context": "fake",
      };
      writeFileSync(file, JSON.stringify(doc, null, 2));
      return file;
    },
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "fake", server: url, skipTLSVerify: true }],
        users: [token === null ? { name: "fake" } : { name: "fake", token }],
        contexts: [{ name: "fake", cluster: "fake", user: "fake" }],
        currentContext: "fake",
      });
      return kc;
    },
    dropWatches() {
      const n = watches.size;
      for (const w of [...watches]) endWatch(w, true);
      return n;
    },
    compact() {
      // a watch may still resume from the current resourceVersion, not from anything older
      compactedRv = rv;
      history.length = 0;
    },
    expireWatches() {
      api.compact();
      const n = watches.size;
      for (const w of [...watches]) {
        writeLine(w, { type: "ERROR", object: status(410, "Expired", "too old resource version") });
        endWatch(w, false);
      }
      return n;
    },
    failWatchRequests(code) {
      failWatchStatus = code;
      if (code !== null) for (const w of [...watches]) endWatch(w, true);
    },
    setLatency(ms) {
      latencyMs = ms;
    },
    failRequests(code = 500) {
      failStatus = code;
      // a failing API server also breaks its open watches
      for (const w of [...watches]) endWatch(w, true);
    },
    async refuseConnections() {
      refusing = true;
      for (const w of [...watches]) endWatch(w, true);
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
    async heal() {
      latencyMs = 0;
      failStatus = null;
      failWatchStatus = null;
      if (refusing) {
        refusing = false;
        await new Promise<void>((resolve, reject) => {
          server.once("error", reject);
          server.listen(port, host, () => {
            server.off("error", reject);
            resolve();
          });
        });
      }
    },
    sendBookmarks() {
      for (const w of watches) if (w.bookmarks) bookmark(w);
    },
    activeWatches: () => watches.size,
    requests: () => [...reqLog],
    counts: () => ({ ...counters }),
    async close() {
      if (closed) return;
      closed = true;
      for (const w of [...watches]) endWatch(w, true);
      for (const s of sockets) s.destroy();
      if (server.listening) await new Promise<void>((r) => server.close(() => r()));
      if (kubeconfigDir) rmSync(kubeconfigDir, { recursive: true, force: true });
    },
  };
  return api;
}
