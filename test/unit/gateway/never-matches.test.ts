/**
 * Misconfiguration is loud: a live stream whose blocks never hold what the gateway computes for
 * the requests it routes there raises `gateway.stream_never_matches` with the likely cause, the
 * gauge `kvsync_gateway_stream_never_matches{stream,cause}` and a `never_matches` warning in
 * /admin/pods. Each cause is produced the way users produce it: a tokenizer that is not the
 * engine's, token ids that differ at the same count (template/revision drift), an engine that
 * publishes under another topic. A hash seed that differs between engines is harmless (the
 * index keys blocks by token ids) and raises nothing.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import pino from "pino";
import type { RunningGateway } from "../../../src/gateway/gateway.ts";
import { loadTokenizer } from "../../../src/tokenize/hf-tokenizer.ts";
import type { Tokenizer } from "../../../src/tokenize/types.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { parseMetrics } from "../../helpers/metrics.ts";
import { MODEL, startFleet } from "./fleet.ts";

const WATCH = { minMisses: 3, graceMs: 200, checkIntervalMs: 100 };

function logSink() {
  const lines: Array<Record<string, unknown>> = [];
  return { lines, log: pino({ level: "info" }, { write: (s: string) => lines.push(JSON.parse(s)) }) };
}

/** A tokenizer that is not the engine's: `map` rewrites the real ids. */
function skewed(real: Tokenizer, map: (ids: number[]) => number[]): Tokenizer {
  return {
    model: real.model,
    eosTokenIds: real.eosTokenIds,
    encodePrompt: async (p, add) => map(await real.encodePrompt(p, add)),
    encodeChat: async (r) => map(await real.encodeChat(r)),
    renderChat: (r) => real.renderChat(r),
    decode: (ids, skip) => real.decode(ids, skip),
  };
}

/** Distinct prompts long enough for several blocks. */
const prompt = (i: number) =>
  `Request ${i}: ${Array.from({ length: 40 }, (_, k) => `word${(k * 7 + i) % 97}`).join(" ")}`;

async function send(gw: RunningGateway, n: number, from = 0): Promise<void> {
  for (let i = from; i < from + n; i++) {
    const r = await fetch(`${gw.url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: prompt(i), max_tokens: 2 }),
    });
    assert.equal(r.status, 200);
    await r.arrayBuffer();
  }
}

async function warningOf(gw: RunningGateway, stream: string) {
  const rows = (await (await fetch(`${gw.adminUrl}/admin/pods`)).json()) as Array<{
    stream: string;
    warnings: Array<{ code: string; message: string }>;
  }>;
  return rows.find((r) => r.stream === stream)?.warnings.find((w) => w.code === "never_matches") ?? null;
}

describe("the never-matches watch", () => {
  const cleanups: Array<() => Promise<void>> = [];
  after(async () => {
    for (const c of cleanups.reverse()) await c();
  });

  /** Requests until the warning is raised (the watch samples one request per stream at a time). */
  async function expectCause(gw: RunningGateway, lines: Array<Record<string, unknown>>, cause: string) {
    const raised = () => lines.some((l) => l.event === "gateway.stream_never_matches");
    for (let i = 0; i < 60 && !raised(); i++) {
      await send(gw, 1, i);
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitFor("warning raised", raised, { timeoutMs: 5_000 });
    const l = lines.find((x) => x.event === "gateway.stream_never_matches")!;
    assert.equal(l.stream, "pod-0");
    assert.equal(l.cause, cause);
    const m = parseMetrics(await gw.registry.metrics());
    assert.equal(m.get(`kvsync_gateway_stream_never_matches{stream="pod-0",cause="${cause}"}`), 1);
    const w = await warningOf(gw, "pod-0");
    assert.ok(w, "no never_matches warning in /admin/pods");
    assert.ok(w.message.startsWith(`${cause}: `), w.message);
    return l;
  }

  it("a tokenizer that is not the engine's: cause tokenizer (the engine counts other prompt tokens)", async () => {
    const real = await loadTokenizer(MODEL);
    const { lines, log } = logSink();
    const f = await startFleet(1, {
      log,
      matchWatch: WATCH,
      // a template that adds a preamble the engine's does not: more tokens, other first block
      tokenizers: () => skewed(real, (ids) => [11, 12, 13, ...ids]),
    });
    cleanups.push(() => f.close());
    const l = await expectCause(f.gw, lines, "tokenizer");
    assert.match(
      String(l.msg),
      /the engine counts \d+ prompt tokens where the gateway's tokenizer gives \d+/,
    );
  });

  it("same token count, other ids (template or revision drift): cause tokens; a matching request clears it", async () => {
    const real = await loadTokenizer(MODEL);
    const { lines, log } = logSink();
    let drift = true;
    const f = await startFleet(1, {
      log,
      matchWatch: WATCH,
      tokenizers: () => skewed(real, (ids) => (drift ? ids.map((t) => (t === 0 ? 1 : t - 1)) : ids)),
    });
    cleanups.push(() => f.close());
    await expectCause(f.gw, lines, "tokens");
    drift = false;
    const cleared = () => lines.some((l) => l.event === "gateway.stream_matches_again");
    for (let i = 100; i < 130 && !cleared(); i++) {
      await send(f.gw, 1, i);
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitFor("cleared", cleared, { timeoutMs: 5_000 });
    assert.equal(await warningOf(f.gw, "pod-0"), null);
    const m = parseMetrics(await f.gw.registry.metrics());
    assert.equal(m.get('kvsync_gateway_stream_never_matches{stream="pod-0",cause="tokens"}'), undefined);
  });

  it("an engine publishing under another topic: cause no_events", async () => {
    const { lines, log } = logSink();
    const f = await startFleet(1, { log, matchWatch: WATCH, topic: "kv@other" }, { topic: "kv@engine" });
    cleanups.push(() => f.close());
    const l = await expectCause(f.gw, lines, "no_events");
    assert.match(String(l.msg), /delivered no KV event/);
  });

  it("engines with different hash seeds match alike and raise nothing (blocks are keyed by token ids)", async () => {
    const { lines, log } = logSink();
    const f = await startFleet(2, { log, matchWatch: WATCH, policy: "round-robin" }, { hashSeed: null });
    cleanups.push(() => f.close());
    const hits = async () =>
      parseMetrics(await f.gw.registry.metrics()).get('kvsync_gateway_match_probes_total{result="hit"}') ?? 0;
    for (let i = 0; i < 60 && (await hits()) < 4; i++) {
      await send(f.gw, 1, i);
      await new Promise((r) => setTimeout(r, 100));
    }
    await waitFor("four hits", async () => (await hits()) >= 4, { timeoutMs: 5_000 });
    const m = parseMetrics(await f.gw.registry.metrics());
    assert.equal(m.get('kvsync_gateway_match_probes_total{result="miss"}') ?? 0, 0);
    assert.ok(!lines.some((l) => l.event === "gateway.stream_never_matches"));
  });
});
