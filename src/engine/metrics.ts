import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { PRESSURE_RESOURCES, readContainerStats } from "./container-stats.ts";

/**
 * vLLM's metric names (prom-client accepts the colon), on a per-engine Registry. Labels:
 * `model_name` and `engine` (the data-parallel rank, as vLLM labels its engines).
 */
export interface RankGauges {
  running(): number;
  waiting(): number;
  usage(): number;
}

export class EngineMetrics {
  readonly registry = new Registry();
  readonly promptTokens: Counter<"model_name" | "engine">;
  readonly generationTokens: Counter<"model_name" | "engine">;
  readonly prefixQueries: Counter<"model_name" | "engine">;
  readonly prefixHits: Counter<"model_name" | "engine">;
  readonly externalPrefixQueries: Counter<"model_name" | "engine">;
  readonly externalPrefixHits: Counter<"model_name" | "engine">;
  readonly ttft: Histogram<"model_name" | "engine">;
  readonly requestSuccess: Counter<"model_name" | "engine" | "finished_reason">;
  readonly preemptions: Counter<"model_name" | "engine">;
  readonly httpErrors: Counter<"code">;

  constructor(model: string, ranks: RankGauges[], cacheConfig: Record<string, string> = {}) {
    const registers = [this.registry];
    const info = new Gauge({
      name: "vllm:cache_config_info",
      help: "Information of the LLMEngine CacheConfig",
      labelNames: Object.keys(cacheConfig),
      registers,
    });
    info.set(cacheConfig, 1);
    const labelNames = ["model_name", "engine"] as const;
    const gauge = (name: string, help: string, read: (r: RankGauges) => number) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        collect() {
          for (let i = 0; i < ranks.length; i++)
            this.set({ model_name: model, engine: String(i) }, read(ranks[i]));
        },
      });
    gauge("vllm:num_requests_running", "Number of requests in model execution batches.", (r) => r.running());
    gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", (r) => r.waiting());
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", (r) => r.usage());
    // the pre-v1 name, still scraped by some gateways
    gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.", (r) => r.usage());
    const counter = (name: string, help: string) => new Counter({ name, help, labelNames, registers });
    this.promptTokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.");
    this.generationTokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.");
    this.prefixQueries = counter(
      "vllm:prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.",
    );
    this.prefixHits = counter(
      "vllm:prefix_cache_hits_total",
      "Prefix cache hits, in terms of number of cached tokens.",
    );
    this.externalPrefixQueries = counter(
      "vllm:external_prefix_cache_queries_total",
      "External (CPU offload tier) prefix cache queries, in tokens.",
    );
    this.externalPrefixHits = counter(
      "vllm:external_prefix_cache_hits_total",
      "External (CPU offload tier) prefix cache hits, in tokens.",
    );
    this.preemptions = counter("vllm:num_preemptions_total", "Cumulative number of preemptions.");
    this.ttft = new Histogram({
      name: "vllm:time_to_first_token_seconds",
      help: "Histogram of time to first token in seconds.",
      labelNames,
      registers,
      buckets: [
        0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80,
      ],
    });
    this.requestSuccess = new Counter({
      name: "vllm:request_success_total",
      help: "Count of successfully processed requests.",
      labelNames: ["model_name", "engine", "finished_reason"],
      registers,
    });
    // the container's own figures, under cAdvisor's names (container-stats.ts); gauges because
    // they are read from the kernel at scrape time, though they only grow within one cgroup
    for (const r of PRESSURE_RESOURCES)
      new Gauge({
        name: `container_pressure_${r}_waiting_seconds_total`,
        help: `Time at least one of the container's tasks waited for ${r} (PSI some), seconds.`,
        registers,
        collect() {
          const s = readContainerStats()?.pressureSeconds[r];
          if (s === undefined) this.reset();
          else this.set(s);
        },
      });
    new Gauge({
      name: "container_oom_events_total",
      help: "OOM kills inside the container's memory cgroup.",
      registers,
      collect() {
        const n = readContainerStats()?.oomKills;
        if (n === undefined) this.reset();
        else this.set(n);
      },
    });
    this.httpErrors = new Counter({
      name: "kvsync_mock_engine_http_errors_total",
      help: "HTTP requests answered with an error, by status code.",
      labelNames: ["code"],
      registers,
    });
  }
}
