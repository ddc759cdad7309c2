/**
 * The Kubernetes API transport of `--discovery kubernetes`: the paged pod list and the informer's
 * watch (separate connect and idle timeouts), each timed through `ApiTiming`.
 */
import { createInterface } from "node:readline";
import { Readable } from "node:stream";
import {
  HttpMethod,
  type KubeConfig,
  type KubernetesListObject,
  RequestContext,
  type V1Pod,
  Watch,
} from "@kubernetes/client-node";
import { fetch } from "undici";
import type { ApiTiming } from "./api-timing.ts";

/** One full list of the pods at `path`, following `continue` tokens; bounded by `timeoutMs`. */
export async function listPods(
  kc: KubeConfig,
  path: string,
  labelSelector: string,
  timeoutMs: number,
  timing: ApiTiming,
): Promise<KubernetesListObject<V1Pod>> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error("no current cluster in kubeconfig");
  const items: V1Pod[] = [];
  let cont: string | undefined;
  let rv = "";
  const signal = AbortSignal.timeout(timeoutMs);
  let pages = 0;
  const t0 = performance.now();
  let ok = false;
  try {
    do {
      const url = new URL(cluster.server.replace(/\/+$/, "") + path);
      url.searchParams.set("labelSelector", labelSelector);
      url.searchParams.set("limit", "500");
      if (cont) url.searchParams.set("continue", cont);
      const ctx = new RequestContext(url.toString(), HttpMethod.GET);
      await kc.applySecurityAuthentication(ctx);
      let res: Awaited<ReturnType<typeof fetch>>;
      try {
        res = await fetch(url, {
          method: "GET",
          headers: { ...ctx.getHeaders(), Accept: "application/json" },
          dispatcher: ctx.getDispatcher(),
          signal,
        });
      } catch (err) {
        if ((err as Error).name === "TimeoutError" || signal.aborted) {
          throw new Error(`list ${path} took longer than ${timeoutMs} ms`);
        }
        throw new Error(`list ${path}: ${(err as Error).message}${causeOf(err)}`);
      }
      let body: unknown;
      try {
        body = await res.json();
      } catch (err) {
        throw new Error(`list ${path}: HTTP ${res.status}, unreadable body: ${(err as Error).message}`);
      }
      if (res.status !== 200) {
        const msg = (body as { message?: string })?.message ?? "";
        const e = new Error(`list ${path}: HTTP ${res.status} ${msg}`.trim()) as Error & {
          statusCode: number;
        };
        e.statusCode = res.status;
        throw e;
      }
      const page = body as KubernetesListObject<V1Pod>;
      for (const it of page.items ?? []) items.push(it);
      cont = page.metadata?._continue || undefined;
      rv = page.metadata?.resourceVersion ?? rv;
      if (++pages > 10_000) throw new Error(`list ${path}: too many pages`);
    } while (cont);
    ok = true;
  } finally {
    timing.record("list", path, performance.now() - t0, ok);
  }
  return { apiVersion: "v1", kind: "PodList", metadata: { resourceVersion: rv }, items };
}

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;

/**
 * The watch transport under client-node's `ListWatch` informer: asks for bookmarks and a
 * server-side timeout, and separates two timeouts the stock `Watch` merges: no response headers
 * within `connectTimeoutMs` is an error (an outage: the informer reports it and is rebuilt),
 * while silence on an open stream for `idleTimeoutMs` is a `TimeoutError` (the informer
 * resumes from its resourceVersion). Reports connection and every event for health tracking.
 */
export class InformerWatch extends Watch {
  constructor(
    config: KubeConfig,
    private readonly t: { timeoutSeconds: number; connectTimeoutMs: number; idleTimeoutMs: number },
    private readonly onActivity: () => void,
    private readonly live: () => boolean,
    private readonly timing: ApiTiming,
  ) {
    super(config);
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: WatchCallback,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    const controller = new AbortController();
    // ListWatch may start a watch after its reconnect delay even though it was stopped meanwhile
    if (!this.live()) return controller;
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (err: unknown) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      controller.abort();
      done(err);
    };
    const arm = (ms: number, kind: "connect" | "idle") => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const e = new Error(
          kind === "connect"
            ? `watch ${path}: no response within ${ms} ms`
            : `watch ${path}: silent for ${ms} ms`,
        );
        // "TimeoutError" makes ListWatch resume quietly; anything else is reported as an error
        e.name = kind === "connect" ? "WatchConnectTimeout" : "TimeoutError";
        finish(e);
      }, ms);
      timer.unref();
    };
    try {
      const cluster = this.config.getCurrentCluster();
      if (!cluster) throw new Error("no current cluster in kubeconfig");
      const url = new URL(cluster.server.replace(/\/+$/, "") + path);
      const params: Record<string, string | number | boolean | undefined> = {
        ...queryParams,
        watch: true,
        allowWatchBookmarks: true,
        timeoutSeconds: this.t.timeoutSeconds,
      };
      for (const [k, v] of Object.entries(params))
        if (v !== undefined && v !== "") url.searchParams.set(k, String(v));
      const ctx = new RequestContext(url.toString(), HttpMethod.GET);
      await this.config.applySecurityAuthentication(ctx);
      arm(this.t.connectTimeoutMs, "connect");
      const t0 = performance.now();
      const res = await fetch(url, {
        method: "GET",
        headers: { ...ctx.getHeaders(), Accept: "application/json" },
        dispatcher: ctx.getDispatcher(),
        signal: controller.signal,
      }).catch((err: unknown) => {
        this.timing.record("watch", path, performance.now() - t0, false);
        throw err;
      });
      this.timing.record("watch", path, performance.now() - t0, res.status === 200);
      if (res.status !== 200) {
        const text = await res.text().catch(() => "");
        let msg = text.slice(0, 200);
        try {
          msg = (JSON.parse(text) as { message?: string }).message ?? msg;
        } catch {}
        const e = new Error(`watch ${path}: HTTP ${res.status} ${msg}`.trim()) as Error & {
          statusCode: number;
        };
        e.statusCode = res.status;
        throw e;
      }
      if (!res.body) throw new Error(`watch ${path}: no body`);
      if (!this.live()) {
        // stopped while connecting: close this stream (ListWatch would keep it, unaborted)
        finish(null);
        return controller;
      }
      this.onActivity();
      arm(this.t.idleTimeoutMs, "idle");
      const body = Readable.fromWeb(res.body as import("node:stream/web").ReadableStream);
      // Once the stream is established, a cut connection is a normal end of the watch: the
      // informer resumes from its resourceVersion (and an unreachable server then fails that).
      const ended = () => finish(null);
      body.on("error", ended);
      body.on("close", ended);
      const lines = createInterface({ input: body, crlfDelay: Number.POSITIVE_INFINITY });
      lines.on("line", (line) => {
        if (finished) return;
        arm(this.t.idleTimeoutMs, "idle");
        let data: { type?: string; object?: unknown };
        try {
          data = JSON.parse(line);
        } catch {
          return; // a torn line; the informer relists on the next error if state drifted
        }
        if (typeof data?.type !== "string") return;
        this.onActivity();
        callback(data.type, data.object, data);
      });
      lines.on("error", ended);
      lines.on("close", ended);
    } catch (err) {
      finish(controller.signal.aborted && finished ? null : err);
    }
    return controller;
  }
}

/** The network cause under a fetch error (e.g. " (ECONNREFUSED)"), for log and error messages. */
export function causeOf(err: unknown): string {
  const c = (err as { cause?: { code?: string; message?: string } })?.cause;
  if (!c) return "";
  return ` (${c.code ?? c.message ?? ""})`;
}
