import { Counter, Gauge, Histogram, Registry } from "prom-client";

const LATENCY_BUCKETS = [
  0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];
const TOKEN_BUCKETS = [0, 16, 64, 256, 1024, 4096, 16384, 65536];

export interface MetricSources {
  streamInflight(): Array<{ stream: string; requests: number }>;
  predictionErrors(): Array<{ pod: string; meanRelError: number }>;
  /** each stream's trust (the prediction feedback) */
  streamTrust?(): Array<{ pod: string; rank: number | null; trust: number; suspect: boolean }>;
  /** each watched pod's health (absent when health checks are off) */
  podHealth?(): Array<{ pod: string; healthy: boolean }>;
}

/** The gateway's Prometheus metrics, on a Registry of its own (several gateways per process in tests). */
export class GatewayMetrics {
  readonly registry: Registry;
  readonly requests: Counter<"model" | "pod" | "policy" | "status">;
  readonly routingSeconds: Histogram<"policy">;
  readonly tokenizeSeconds: Histogram<"kind">;
  readonly tokenizeFailures: Counter<"reason">;
  readonly matchedRatio: Histogram<"policy">;
  readonly predictionErrorTokens: Histogram<"policy">;
  readonly predictionErrorRatio: Gauge<"pod">;
  readonly streamTrust: Gauge<"pod" | "rank">;
  readonly streamSuspect: Gauge<"pod" | "rank">;
  readonly inflight: Gauge;
  readonly inflightPerStream: Gauge<"stream">;
  readonly retries: Counter<"reason">;
  readonly upstreamErrors: Counter<"pod" | "kind">;
  readonly streamErrors: Counter<"pod" | "reason">;
  readonly clientAborts: Counter<"pod">;
  readonly firstByteSeconds: Histogram<"policy">;
  readonly durationSeconds: Histogram<"policy">;
  readonly engineScrapes: Counter<"result">;
  readonly podHealthy: Gauge<"pod">;
  readonly podEjections: Counter<"reason">;
  readonly healthProbes: Counter<"result">;
  readonly upstreamAborts: Counter<"reason">;
  readonly podSlow: Counter<"pod">;
  readonly podLatencyP75: Gauge<"pod" | "source">;
  readonly podPressure: Gauge<"pod" | "resource">;
  readonly podPressureTotal: Counter<"pod" | "resource">;
  readonly podOomKills: Counter<"pod">;
  /** read at scrape time by the per-stream and per-pod gauges */
  sources: MetricSources | null = null;

  constructor(registry = new Registry()) {
    const registers = [registry];
    this.registry = registry;
    this.requests = new Counter({
      name: "kvsync_gateway_requests_total",
      help: "Requests answered, by model, pod (empty when none was chosen), policy and HTTP status",
      labelNames: ["model", "pod", "policy", "status"],
      registers,
    });
    this.routingSeconds = new Histogram({
      name: "kvsync_gateway_routing_decision_seconds",
      help: "Time to rank the candidates (index match + scoring), excluding tokenization",
      labelNames: ["policy"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.tokenizeSeconds = new Histogram({
      name: "kvsync_gateway_tokenization_seconds",
      help: "Time to tokenize a request for routing",
      labelNames: ["kind"],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.tokenizeFailures = new Counter({
      name: "kvsync_gateway_tokenization_failures_total",
      help: "Requests routed without tokens because tokenization failed",
      labelNames: ["reason"],
      registers,
    });
    this.matchedRatio = new Histogram({
      name: "kvsync_gateway_matched_token_ratio",
      help: "Predicted cached tokens of the chosen pod / prompt tokens",
      labelNames: ["policy"],
      buckets: [0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1],
      registers,
    });
    this.predictionErrorTokens = new Histogram({
      name: "kvsync_gateway_prediction_error_tokens",
      help: "|predicted cached tokens - engine-reported cached_tokens| per request",
      labelNames: ["policy"],
      buckets: TOKEN_BUCKETS,
      registers,
    });
    this.predictionErrorRatio = new Gauge({
      name: "kvsync_gateway_prediction_error_ratio",
      help: "Moving average of |predicted - actual| cached tokens / prompt tokens, per pod",
      labelNames: ["pod"],
      registers,
      collect: () => {
        if (this.sources === null) return;
        this.predictionErrorRatio.reset();
        for (const e of this.sources.predictionErrors())
          this.predictionErrorRatio.set({ pod: e.pod }, e.meanRelError);
      },
    });
    const trustOf = () => {
      if (this.sources?.streamTrust === undefined) return;
      this.streamTrust.reset();
      this.streamSuspect.reset();
      for (const t of this.sources.streamTrust()) {
        const labels = { pod: t.pod, rank: t.rank === null ? "" : String(t.rank) };
        this.streamTrust.set(labels, t.trust);
        this.streamSuspect.set(labels, t.suspect ? 1 : 0);
      }
    };
    this.streamTrust = new Gauge({
      name: "kvsync_stream_trust_ratio",
      help: "How far routing trusts each engine stream's cache claims (0..1): a moving average of engine-reported over predicted cached tokens (over-prediction only); streams without evidence are absent (trust 1)",
      labelNames: ["pod", "rank"],
      registers,
      collect: trustOf,
    });
    this.streamSuspect = new Gauge({
      name: "kvsync_stream_prediction_suspect",
      help: "1 while a stream's cache claims keep proving wrong (trust below --trust-suspect-below), else 0",
      labelNames: ["pod", "rank"],
      registers,
      collect: trustOf,
    });
    this.inflight = new Gauge({
      name: "kvsync_gateway_inflight_requests",
      help: "Client requests being handled",
      registers,
    });
    this.inflightPerStream = new Gauge({
      name: "kvsync_gateway_stream_inflight_requests",
      help: "Requests in flight to each engine stream (pod or pod#rank)",
      labelNames: ["stream"],
      registers,
      collect: () => {
        if (this.sources === null) return;
        this.inflightPerStream.reset();
        for (const s of this.sources.streamInflight())
          this.inflightPerStream.set({ stream: s.stream }, s.requests);
      },
    });
    this.retries = new Counter({
      name: "kvsync_gateway_upstream_retries_total",
      help: "Requests retried on the next-best pod after a connection failure before any byte",
      labelNames: ["reason"],
      registers,
    });
    this.upstreamErrors = new Counter({
      name: "kvsync_gateway_upstream_errors_total",
      help: "Upstream failures by pod and kind (connect, timeout, reset, ...)",
      labelNames: ["pod", "kind"],
      registers,
    });
    this.streamErrors = new Counter({
      name: "kvsync_gateway_stream_errors_total",
      help: "Streams ended with an error event because the pod failed mid-stream",
      labelNames: ["pod", "reason"],
      registers,
    });
    this.clientAborts = new Counter({
      name: "kvsync_gateway_client_aborts_total",
      help: "Requests whose client disconnected before the end (upstream aborted)",
      labelNames: ["pod"],
      registers,
    });
    this.firstByteSeconds = new Histogram({
      name: "kvsync_gateway_time_to_first_byte_seconds",
      help: "Client request received to first upstream response byte",
      labelNames: ["policy"],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.durationSeconds = new Histogram({
      name: "kvsync_gateway_request_duration_seconds",
      help: "Client request received to response end",
      labelNames: ["policy"],
      buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers,
    });
    this.engineScrapes = new Counter({
      name: "kvsync_gateway_engine_metrics_scrapes_total",
      help: "Engine /metrics scrapes (--scrape-engine-metrics) by result",
      labelNames: ["result"],
      registers,
    });
    this.podHealthy = new Gauge({
      name: "kvsync_gateway_pod_healthy",
      help: "1 while a pod is in rotation by the health signal, 0 while it is out",
      labelNames: ["pod"],
      registers,
      collect: () => {
        const src = this.sources?.podHealth;
        if (src === undefined) return;
        this.podHealthy.reset();
        for (const h of src()) this.podHealthy.set({ pod: h.pod }, h.healthy ? 1 : 0);
      },
    });
    this.podEjections = new Counter({
      name: "kvsync_gateway_pod_ejections_total",
      help: "Pods taken out of rotation by the health signal, by reason (probe_timeout, connect, ...)",
      labelNames: ["reason"],
      registers,
    });
    this.healthProbes = new Counter({
      name: "kvsync_gateway_health_probes_total",
      help: "Active health probes of the pods' /health, by result (ok, probe_timeout, probe_error, probe_status_N; late_timer: a timeout that fired late, the gateway stalled, restarted)",
      labelNames: ["result"],
      registers,
    });
    this.upstreamAborts = new Counter({
      name: "kvsync_gateway_upstream_aborts_total",
      help: "Upstream requests the gateway cut, by reason (pod_unhealthy, first_byte_timeout)",
      labelNames: ["reason"],
      registers,
    });
    this.podSlow = new Counter({
      name: "kvsync_gateway_pod_slow_total",
      help: "Times a pod turned slow: its time-to-first-byte upper quartile far above the fleet's (gateway.pod_slow)",
      labelNames: ["pod"],
      registers,
    });
    this.podLatencyP75 = new Gauge({
      name: "kvsync_gateway_pod_latency_p75_seconds",
      help: "Upper quartile of each pod's latency over the slowness window, by source (ttfb: requests' time to first byte; probe: health probe round trip); absent: too few samples",
      labelNames: ["pod", "source"],
      registers,
    });
    this.podPressure = new Gauge({
      name: "kvsync_gateway_pod_pressure_ratio",
      help: "Share of the last scrape interval in which a pod's container waited for the resource (PSI some, from its /metrics); absent: not reported",
      labelNames: ["pod", "resource"],
      registers,
    });
    this.podPressureTotal = new Counter({
      name: "kvsync_gateway_pod_pressure_total",
      help: "Times a pod came under pressure for a resource (gateway.pod_pressure)",
      labelNames: ["pod", "resource"],
      registers,
    });
    this.podOomKills = new Counter({
      name: "kvsync_gateway_pod_oom_kills_total",
      help: "OOM kills inside a pod's containers, from its /metrics (gateway.pod_oom_kill)",
      labelNames: ["pod"],
      registers,
    });
  }
}
