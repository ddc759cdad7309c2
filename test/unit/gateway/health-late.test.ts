/**
 * A probe whose timeout timer fires late (this process stalled: a blocked or saturated event
 * loop) is not a failed probe: the pod gets its timeout again. Found by bench/scale.bench.ts: a
 * gateway starved of CPU following 1,000 pods ejected every pod at once ("every pod ... is out
 * of rotation") while each pod answered at once. A pod that does not answer still goes out.
 */
import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import { after, describe, it } from "node:test";
import { PodHealth } from "../../../src/gateway/health.ts";
import { GatewayMetrics } from "../../../src/gateway/metrics.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";

/** Block this process's event loop for `ms` (what a starved gateway's probes live through). */
function stall(ms: number): void {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    // busy on purpose
  }
}

async function listen(answer: boolean): Promise<{ server: Server; url: string }> {
  const server = createServer((_req, res) => {
    if (answer) res.end("ok");
    // else: never answered
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, url: `http://127.0.0.1:${(server.address() as { port: number }).port}` };
}

async function count(metrics: GatewayMetrics, result: string): Promise<number> {
  const m = await metrics.healthProbes.get();
  return m.values.find((v) => v.labels.result === result)?.value ?? 0;
}

describe("health probes through a stalled gateway", { timeout: 60_000 }, () => {
  const servers: Server[] = [];
  after(() => {
    for (const s of servers) s.closeAllConnections?.();
    for (const s of servers) s.close();
  });

  it("a probe timer that fires late is re-armed, and the pod that answers stays in rotation", async () => {
    const { server, url } = await listen(true);
    servers.push(server);
    const metrics = new GatewayMetrics();
    // one failed probe would eject: the stalled timer must not count as one
    const health = new PodHealth(
      { probeIntervalMs: 60_000, probeTimeoutMs: 1_000, unhealthyAfterProbes: 1 },
      metrics,
      silentLogger(),
    );
    try {
      health.setPods([{ name: "p", http: url }]);
      health.start();
      stall(2_500);
      await waitFor("the probe answered", async () => (await count(metrics, "ok")) === 1, {
        timeoutMs: 20_000,
        intervalMs: 20,
      });
      assert.ok((await count(metrics, "late_timer")) >= 1);
      assert.equal(await count(metrics, "probe_timeout"), 0);
      assert.equal(health.isHealthy("p"), true);
    } finally {
      await health.close();
    }
  });

  it("a pod that does not answer still goes out after the stall", async () => {
    const { server, url } = await listen(false);
    servers.push(server);
    const metrics = new GatewayMetrics();
    const health = new PodHealth(
      { probeIntervalMs: 60_000, probeTimeoutMs: 500, unhealthyAfterProbes: 1 },
      metrics,
      silentLogger(),
    );
    try {
      health.setPods([{ name: "p", http: url }]);
      health.start();
      stall(1_500);
      await waitFor("the silent pod out of rotation", () => !health.isHealthy("p"), {
        timeoutMs: 20_000,
        intervalMs: 20,
      });
      assert.equal(health.status("p")?.reason, "probe_timeout");
    } finally {
      await health.close();
    }
  });
});
