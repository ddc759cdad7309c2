import { once } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Dispatcher } from "undici";
import type { LoadTicket, LoadTracker } from "../routing/load.ts";
import type { RoutingPolicy, ScoredCandidate } from "../routing/types.ts";
import type { Logger } from "../util/log.ts";
import type { RouteActivity } from "./activity.ts";
import { Cancel } from "./cancel.ts";
import { GatewayError, noReadyPod, upstreamFailed, upstreamTimeout } from "./errors.ts";
import { originOf, type PodHealth, type PodUnhealthyError, type TrackedRequest } from "./health.ts";
import type { GatewayMetrics } from "./metrics.ts";
import type { Plan } from "./planner.ts";
import { SseSplitter } from "./sse.ts";
import { classifyUpstreamError, isRetryableBeforeResponse, type UpstreamPools } from "./upstream.ts";
import type { UsageAccounting } from "./usage.ts";

/** non-streaming responses are buffered (to read their usage): at most this much */
export const MAX_RESPONSE_BYTES = 256 * 1024 * 1024;

/** One client request's record for its metrics, filled in as it goes. */
export interface RequestCtx {
  model: string;
  pod: string;
  status: string | null;
  /** performance.now() at arrival */
  t0: number;
}

export interface ProxyOptions {
  pools: UpstreamPools;
  loads: LoadTracker;
  policy: RoutingPolicy;
  /** null when health checks are off */
  health: PodHealth | null;
  usage: UsageAccounting;
  /** the decisions list: a retry shows there with the pod that answered (null: none kept) */
  activity?: Pick<RouteActivity, "retried"> | null;
  metrics: GatewayMetrics;
  log: Logger;
  headersTimeoutMs: number;
  /** streaming requests: request sent → response headers (ms); the engine answers them at once */
  firstByteTimeoutMs: number;
}

/**
 * The forwarding half of the gateway: sends a planned request to its pod, retries once on the
 * next healthy pod when nothing reached the client yet, and relays the answer (buffered JSON or
 * an SSE stream) while the usage accounting reads it.
 */
export class RequestProxy {
  private readonly pools: UpstreamPools;
  private readonly loads: LoadTracker;
  private readonly policy: RoutingPolicy;
  private readonly health: PodHealth | null;
  private readonly usage: UsageAccounting;
  private readonly metrics: GatewayMetrics;
  private readonly log: Logger;

  constructor(private readonly o: ProxyOptions) {
    this.pools = o.pools;
    this.loads = o.loads;
    this.policy = o.policy;
    this.health = o.health;
    this.usage = o.usage;
    this.metrics = o.metrics;
    this.log = o.log;
  }

  /** Forward `body` (raw: its bytes as received) to the plan's pod and answer the client. */
  async dispatch(
    req: IncomingMessage,
    res: ServerResponse,
    ctx: RequestCtx,
    path: string,
    body: Record<string, unknown>,
    raw: Buffer,
    plan: Plan,
  ): Promise<void> {
    const { parsed, decision, route } = plan;
    // chat and completions streams carry usage only when asked: ask on the client's behalf
    const inject =
      parsed.stream && !parsed.includeUsage && (parsed.kind === "chat" || parsed.kind === "completion");
    const payload = inject
      ? Buffer.from(
          JSON.stringify({
            ...body,
            stream_options: { ...((body.stream_options as object | null) ?? {}), include_usage: true },
          }),
        )
      : raw;
    const ac = new Cancel();
    // the client may have gone while the request was tokenized and routed
    let clientGone = res.destroyed || req.socket?.destroyed === true;
    if (clientGone) {
      plan.ticket?.done();
      ctx.status = "client_closed";
      this.metrics.clientAborts.inc({ pod: "" });
      return;
    }
    res.once("close", () => {
      if (!res.writableFinished) {
        clientGone = true;
        ac.abort();
      }
    });
    req.once("close", () => {
      if (!req.complete) {
        clientGone = true;
        ac.abort();
      }
    });
    const promptTokens = route.tokenIds.length;
    const order = decision.ranked;
    let sc = order[0];
    for (let attempt = 0; attempt < 2 && sc !== undefined; attempt++) {
      const cand = sc.candidate;
      ctx.pod = cand.pod;
      const ticket =
        attempt === 0 && plan.ticket !== null
          ? plan.ticket
          : this.loads.begin(cand.streamId, promptTokens - sc.savedTokens);
      // the health signal can cut this attempt (its pod went out of rotation) apart from the client
      const tracked = this.health?.track(cand.pod, ac) ?? null;
      // an attempt that sent the client nothing can go to the next healthy pod once
      const next = () => (attempt === 0 ? this.retryTarget(order, cand.pod) : undefined);
      let up: Dispatcher.ResponseData;
      let sentAt = performance.now();
      try {
        const headers: Record<string, string> = {
          // a form (audio) keeps its boundary; everything else is the JSON read above
          "content-type": parsed.kind === "audio" ? String(req.headers["content-type"]) : "application/json",
          "content-length": String(payload.length),
        };
        const auth = req.headers.authorization;
        if (typeof auth === "string") headers.authorization = auth;
        const rid = req.headers["x-request-id"];
        if (typeof rid === "string") headers["x-request-id"] = rid;
        if (cand.rank !== null) headers["x-data-parallel-rank"] = String(cand.rank);
        sentAt = performance.now();
        up = await this.pools.get(originOf(cand.http)).request({
          path,
          method: "POST",
          headers,
          body: payload,
          signal: tracked?.signal ?? ac,
          // a streaming engine answers headers at once: waiting longer means it is stuck
          headersTimeout: parsed.stream
            ? Math.min(this.o.firstByteTimeoutMs, this.o.headersTimeoutMs)
            : this.o.headersTimeoutMs,
        });
      } catch (err) {
        ticket.done();
        tracked?.release();
        const cut = tracked?.abortedBy ?? null;
        const kind = cut !== null ? "pod_unhealthy" : classifyUpstreamError(err);
        if (clientGone || kind === "aborted") {
          ctx.status = "client_closed";
          this.metrics.clientAborts.inc({ pod: cand.pod });
          res.destroy();
          return;
        }
        this.metrics.upstreamErrors.inc({ pod: cand.pod, kind });
        const firstByte = kind === "headers_timeout" && parsed.stream;
        if (firstByte) this.metrics.upstreamAborts.inc({ reason: "first_byte_timeout" });
        // a non-streaming request's long wait is generation time, not evidence against the pod
        if (kind === "connect" || kind === "reset" || firstByte)
          this.health?.requestFailed(cand.pod, firstByte ? "first_byte_timeout" : kind);
        const n = next();
        // not after a first-byte timeout: the client has already waited the whole budget once
        if (n !== undefined && (isRetryableBeforeResponse(err) || cut !== null)) {
          this.metrics.retries.inc({ reason: kind });
          this.log.warn(
            { event: "gateway.retry", pod: cand.pod, next: n.candidate.pod, kind, err: String(err) },
            "pod failed before any byte; retrying on the next-best pod",
          );
          this.o.activity?.retried(plan, n.candidate, kind);
          sc = n;
          continue;
        }
        if (cut !== null) throw cutError(cut, "before answering");
        if (kind === "headers_timeout") throw upstreamTimeout(`pod ${cand.pod} did not answer in time`);
        throw upstreamFailed(`pod ${cand.pod} failed: ${(err as Error)?.message ?? String(err)}`);
      }
      this.health?.requestSucceeded(cand.pod, performance.now() - sentAt);
      tracked?.touch();
      this.policy.onDispatched?.(route, sc);
      this.metrics.matchedRatio.observe(
        { policy: this.policy.name },
        promptTokens > 0 ? Math.min(1, sc.matchedTokens / promptTokens) : 0,
      );
      try {
        await this.relay(res, ctx, up, sc, plan, inject, () => clientGone, ticket, tracked);
      } catch (err) {
        const n = next();
        if (tracked?.abortedBy && !res.headersSent && n !== undefined) {
          this.metrics.retries.inc({ reason: "pod_unhealthy" });
          this.log.warn(
            { event: "gateway.retry", pod: cand.pod, next: n.candidate.pod, kind: "pod_unhealthy" },
            "pod went out of rotation before the response; retrying on the next-best pod",
          );
          this.o.activity?.retried(plan, n.candidate, "pod_unhealthy");
          sc = n;
          continue;
        }
        throw err;
      } finally {
        ticket.done();
        tracked?.release();
      }
      return;
    }
    throw noReadyPod(parsed.model);
  }

  /** The best-ranked candidate on another pod that is in rotation, for a retry. */
  private retryTarget(order: ScoredCandidate[], failedPod: string): ScoredCandidate | undefined {
    return order.find(
      (x) => x.candidate.pod !== failedPod && (this.health?.isHealthy(x.candidate.pod) ?? true),
    );
  }

  private async relay(
    res: ServerResponse,
    ctx: RequestCtx,
    up: Dispatcher.ResponseData,
    sc: ScoredCandidate,
    plan: Plan,
    injected: boolean,
    clientGone: () => boolean,
    ticket: Pick<LoadTicket, "prefillDone">,
    tracked: TrackedRequest | null,
  ): Promise<void> {
    const pod = sc.candidate.pod;
    const ctype = String(up.headers["content-type"] ?? "application/json");
    const headers: Record<string, string> = {
      "content-type": ctype,
      "x-kvsync-pod": pod,
      "x-kvsync-matched-tokens": String(sc.matchedTokens),
      "x-kvsync-policy": this.policy.name,
    };
    if (sc.candidate.rank !== null) headers["x-kvsync-rank"] = String(sc.candidate.rank);
    const streaming = up.statusCode === 200 && ctype.includes("text/event-stream");
    if (!streaming) {
      const chunks: Buffer[] = [];
      let size = 0;
      try {
        for await (const c of up.body) {
          tracked?.touch();
          if (size === 0) this.usage.firstByte(ticket, ctx.t0);
          chunks.push(c as Buffer);
          size += (c as Buffer).length;
          if (size > MAX_RESPONSE_BYTES) {
            up.body.destroy();
            this.metrics.upstreamErrors.inc({ pod, kind: "too_large" });
            throw upstreamFailed(`pod ${pod} sent a response larger than ${MAX_RESPONSE_BYTES} bytes`);
          }
        }
      } catch (err) {
        if (err instanceof GatewayError) throw err;
        if (clientGone()) {
          ctx.status = "client_closed";
          this.metrics.clientAborts.inc({ pod });
          return;
        }
        if (tracked?.abortedBy) {
          this.metrics.upstreamErrors.inc({ pod, kind: "pod_unhealthy" });
          throw cutError(tracked.abortedBy, "before finishing its response");
        }
        const kind = classifyUpstreamError(err);
        this.metrics.upstreamErrors.inc({ pod, kind });
        if (kind === "body_timeout") throw upstreamTimeout(`pod ${pod} stalled`);
        throw upstreamFailed(`pod ${pod} failed mid-response: ${(err as Error)?.message ?? String(err)}`);
      }
      const buf = Buffer.concat(chunks, size);
      if (up.statusCode === 200 && ctype.includes("json")) {
        this.usage.observeBody(pod, sc, plan, buf);
      }
      headers["content-length"] = String(buf.length);
      if (clientGone()) return;
      res.writeHead(up.statusCode, headers);
      res.end(buf);
      return;
    }

    headers["cache-control"] = "no-cache";
    res.writeHead(200, headers);
    res.flushHeaders();
    const splitter = new SseSplitter();
    let first = true;
    try {
      for await (const c of up.body) {
        tracked?.touch();
        if (first) {
          first = false;
          this.usage.firstByte(ticket, ctx.t0);
        }
        let out = "";
        for (const ev of splitter.push(c as Buffer)) {
          if (this.usage.inspectEvent(ev, pod, sc, plan, injected)) out += ev;
        }
        if (out.length > 0 && !(await write(res, out, tracked))) break;
      }
      const rest = splitter.end();
      if (rest.length > 0 && !clientGone()) await write(res, rest, tracked);
      if (!clientGone()) res.end();
      else {
        ctx.status = "client_closed";
        this.metrics.clientAborts.inc({ pod });
      }
    } catch (err) {
      if (clientGone()) {
        ctx.status = "client_closed";
        this.metrics.clientAborts.inc({ pod });
        return;
      }
      const cut = tracked?.abortedBy ?? null;
      const kind = cut !== null ? "pod_unhealthy" : classifyUpstreamError(err);
      this.metrics.upstreamErrors.inc({ pod, kind });
      this.metrics.streamErrors.inc({ pod, reason: kind });
      ctx.status = "stream_error";
      this.log.warn({ event: "gateway.stream_error", pod, kind, err: String(err) }, "pod failed mid-stream");
      const e =
        cut !== null
          ? cutError(cut, "mid-stream")
          : kind === "body_timeout"
            ? upstreamTimeout(`pod ${pod} stalled mid-stream`)
            : upstreamFailed(`pod ${pod} failed mid-stream: ${(err as Error)?.message ?? String(err)}`);
      // end the client's stream with an error event, then close: never leave it hanging
      res.end(`data: ${JSON.stringify(e.body())}\n\n`);
    }
  }
}

/** The client's error for a request cut because its pod went out of rotation. */
function cutError(cut: PodUnhealthyError, where: string): GatewayError {
  const m = `pod ${cut.pod} stopped answering ${where}: out of rotation (${cut.reason}), request aborted`;
  // a pod that stopped answering is a timeout; one that refuses or resets has failed
  return cut.reason.includes("timeout") ? upstreamTimeout(m) : upstreamFailed(m);
}

/** Write with backpressure; false when the client went away. */
async function write(res: ServerResponse, s: string, tracked: TrackedRequest | null): Promise<boolean> {
  if (res.destroyed || res.writableEnded) return false;
  if (res.write(s)) return true;
  const ac = new AbortController();
  tracked?.clientWait(true);
  try {
    await Promise.race([
      once(res, "drain", { signal: ac.signal }),
      once(res, "close", { signal: ac.signal }),
    ]);
  } catch {
    // aborted listener
  } finally {
    ac.abort();
    tracked?.clientWait(false);
  }
  return !res.destroyed && !res.writableEnded;
}
