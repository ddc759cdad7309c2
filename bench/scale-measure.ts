/**
 * The scale benchmark's measurements (scale.bench.ts): the gateway's metrics (batches applied,
 * the event-lag and routing-decision histograms) and the request load (token-id prompts on the
 * pods' tenant system prompts, closed loop).
 */
import { performance } from "node:perf_hooks";
import { Pool } from "undici";
import { BLOCK_SIZE, TENANT_BLOCKS, TENANTS, tenantsOf, tenantToken } from "./scale-fleet.ts";

const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

// ------------------------------------------------------------------ metrics

export interface Scrape {
  batches: number;
  lag: Map<number, number>;
  decision: Map<number, number>;
  live: number;
  ms: number;
}

export async function scrape(admin: string): Promise<Scrape> {
  const t0 = performance.now();
  const text = await (await fetch(`${admin}/metrics`, { signal: AbortSignal.timeout(180_000) })).text();
  const ms = performance.now() - t0;
  const s: Scrape = { batches: 0, lag: new Map(), decision: new Map(), live: 0, ms };
  for (const line of text.split("\n")) {
    if (line.startsWith("kvsync_subscriber_batches_applied_total{"))
      s.batches += Number(line.split(" ").pop());
    else if (line.startsWith("kvsync_subscriber_event_lag_seconds_bucket{")) {
      const le = /le="([^"]+)"/.exec(line)![1];
      s.lag.set(le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le), Number(line.split(" ").pop()));
    } else if (line.startsWith("kvsync_gateway_routing_decision_seconds_bucket{")) {
      const le = /le="([^"]+)"/.exec(line)![1];
      const k = le === "+Inf" ? Number.POSITIVE_INFINITY : Number(le);
      s.decision.set(k, (s.decision.get(k) ?? 0) + Number(line.split(" ").pop()));
    } else if (line.startsWith('kvsync_subscriber_streams{state="live"}'))
      s.live = Number(line.split(" ").pop());
  }
  return s;
}

/** Bucket upper bound holding quantile q of the difference of two cumulative histograms, and the share <= `at`. */
export function histDiff(a: Map<number, number>, b: Map<number, number>, q: number, at: number) {
  const les = [...b.keys()].sort((x, y) => x - y);
  const total = (b.get(Number.POSITIVE_INFINITY) ?? 0) - (a.get(Number.POSITIVE_INFINITY) ?? 0);
  let quantile = Number.NaN;
  let within = Number.NaN;
  for (const le of les) {
    const n = (b.get(le) ?? 0) - (a.get(le) ?? 0);
    if (Number.isNaN(quantile) && total > 0 && n >= q * total) quantile = le;
    if (le === at) within = total > 0 ? n / total : Number.NaN;
  }
  return { count: total, quantile, within };
}

// ------------------------------------------------------------------ requests

/** token-id prompts: one of the tenant system prompts, then a unique question */
function promptFor(k: number): { tokens: number[]; tenant: number } {
  const tenant = k % TENANTS;
  const tokens: number[] = [];
  for (let j = 0; j < TENANT_BLOCKS * BLOCK_SIZE; j++) tokens.push(tenantToken(tenant, j));
  for (let j = 0; j < 48; j++) tokens.push(150_000 + ((k * 131 + j * 17) % 1000));
  return { tokens, tenant };
}

export async function requests(url: string, ms: number, model: string, clients: number) {
  const pool = new Pool(url, { connections: clients });
  const lat: number[] = [];
  let ok = 0;
  let failed = 0;
  let onHolder = 0;
  let firstError = "";
  let k = 0;
  const deadline = performance.now() + ms;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < deadline) {
        const { tokens, tenant } = promptFor(k++);
        const t0 = performance.now();
        try {
          const r = await pool.request({
            path: "/v1/completions",
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ model, prompt: tokens, max_tokens: 1 }),
          });
          const text = await r.body.text();
          if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}: ${text.slice(0, 200)}`);
          ok++;
          lat.push(performance.now() - t0);
          const pod = Number(String(r.headers["x-kvsync-pod"] ?? "").replace(/^.*pod-/, ""));
          if (tenantsOf(pod).includes(tenant)) onHolder++;
        } catch (err) {
          failed++;
          if (firstError === "") firstError = String(err);
        }
      }
    }),
  );
  await pool.close();
  lat.sort((a, b) => a - b);
  return {
    rps: round((ok * 1000) / ms),
    ok,
    failed,
    firstError,
    p50Ms: round(lat[Math.floor(lat.length * 0.5)] ?? Number.NaN, 2),
    p99Ms: round(lat[Math.floor(lat.length * 0.99)] ?? Number.NaN, 2),
    onTenantHolder: round(ok > 0 ? onHolder / ok : Number.NaN, 3),
  };
}

export async function indexEntries(admin: string): Promise<number> {
  const text = await (await fetch(`${admin}/metrics`)).text();
  const m = /^kvsync_index_entries (\d+)/m.exec(text);
  return m === null ? 0 : Number(m[1]);
}
