/**
 * Where the gateway's CPU goes for one request of bench:gateway, stage by stage, measured in
 * process with the gateway's own functions on the bench's own request bodies (so the figures
 * add up against the gateway's CPU per request from the load phase; what is left is the HTTP
 * server and the undici client, i.e. the proxying itself):
 *   body parse (JSON + validation), template render, tokenize (segment split, segment cache,
 *   encode of what is not cached, assemble), hash + match (the sync index, 4 pods holding the
 *   bench's prompts), score (the rest of the kv-aware decision), usage parse (the engine's JSON
 *   answer).
 * CPU time per call (process.cpuUsage over many calls), so the machine's load changes little.
 */

import { parseRequest } from "../src/gateway/request-kinds.ts";
import { createIndex, type StreamRef } from "../src/index/index.ts";
import { blockStored, hashFromInt } from "../src/protocol/index.ts";
import { createPolicy, LoadTracker } from "../src/routing/index.ts";
import type { Candidate } from "../src/routing/types.ts";
import { loadTokenizer, TokenizerPool } from "../src/tokenize/index.ts";

export interface StageFigures {
  /** CPU us per request, by stage */
  bodyParseUs: number;
  renderUs: number;
  /** the same renders with the template interpreted (no direct renderer): the same-run baseline */
  renderInterpretedUs: number;
  /** share of the bench's renders done by a direct renderer (fast-templates.ts) */
  renderDirectShare: number;
  tokenizeUs: number;
  matchUs: number;
  scoreUs: number;
  usageParseUs: number;
  totalUs: number;
  promptTokens: number;
}

const round = (x: number) => Math.round(x * 10) / 10;

/** Mean CPU us of `fn` over `n` calls (after a warm-up of n/4). */
async function cpuUs(n: number, fn: (i: number) => unknown): Promise<number> {
  for (let i = 0; i < n / 4; i++) await fn(i);
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) await fn(i);
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / n;
}

export async function stageBench(model: string, bodies: string[], n = 4000): Promise<StageFigures> {
  const bufs = bodies.map((b) => Buffer.from(b));
  const parsed = await Promise.all(bufs.map(async (b) => (await parseRequest("chat", b, "")).parsed));
  const tok = new TokenizerPool(await loadTokenizer(model), { size: 1 });
  const texts = parsed.map((p) => tok.base.renderChatSync(p.chat!));
  const ids = await Promise.all(texts.map((t) => tok.encodePrompt(t, false)));
  // 4 pods, each holding the prompts routed to it (as the engines' events would say)
  const BS = 16;
  const index = createIndex({});
  const streams: StreamRef[] = Array.from({ length: 4 }, (_, i) => ({
    streamId: `pod-${i}`,
    pod: `pod-${i}`,
    rank: null,
    model,
  }));
  let h = 1;
  ids.forEach((t, k) => {
    const blocks = Math.floor(t.length / BS);
    const hashes = Array.from({ length: blocks }, () => hashFromInt(h++));
    index.applyBatch(streams[k % 4], {
      ts: k,
      events: [blockStored(hashes, null, t.slice(0, blocks * BS), BS, { medium: "GPU" })],
      dpRank: null,
    });
  });
  const candidates: Candidate[] = streams.map((s, i) => ({
    streamId: s.streamId,
    pod: s.pod,
    rank: null,
    http: `http://127.0.0.1:${8000 + i}`,
    live: true,
    blockSize: BS,
  }));
  const policy = createPolicy("kv-aware", { index, loads: new LoadTracker() });
  const ns = { model, lora: null, blockSize: BS };
  const answer = Buffer.from(
    JSON.stringify({
      id: "chatcmpl-1",
      object: "chat.completion",
      created: 1,
      model,
      choices: [
        {
          index: 0,
          message: { role: "assistant", content: "one two three four five six seven eight" },
          finish_reason: "length",
        },
      ],
      usage: {
        prompt_tokens: 512,
        completion_tokens: 8,
        total_tokens: 520,
        prompt_tokens_details: { cached_tokens: 496 },
      },
    }),
  );
  const m = bodies.length;
  const bodyParseUs = await cpuUs(n, (i) => parseRequest("chat", bufs[i % m], "application/json"));
  const template = tok.base.core.template!;
  const direct0 = template.fastRenders;
  const renderUs = await cpuUs(n, (i) => tok.base.renderChatSync(parsed[i % m].chat!));
  const renderDirectShare = (template.fastRenders - direct0) / (n + n / 4);
  const interpreted = template.withoutFastPath();
  const renderInterpretedUs = await cpuUs(n / 4, (i) => interpreted.render(parsed[i % m].chat!));
  // every text was encoded once above: its segments are cached, as in a warm gateway
  const tokenizeUs = await cpuUs(n, (i) => tok.encodePrompt(texts[i % m], false));
  const matchUs = await cpuUs(n, (i) => index.match(ns, ids[i % m]));
  const routeUs = await cpuUs(n, (i) => policy.route({ ns, tokenIds: ids[i % m], candidates, dryRun: true }));
  const usageParseUs = await cpuUs(n, () => JSON.parse(answer.toString("utf8")));
  await tok.close();
  const scoreUs = Math.max(0, routeUs - matchUs);
  let tokens = 0;
  for (const t of ids) tokens += t.length;
  return {
    bodyParseUs: round(bodyParseUs),
    renderUs: round(renderUs),
    renderInterpretedUs: round(renderInterpretedUs),
    renderDirectShare: round(renderDirectShare * 100) / 100,
    tokenizeUs: round(tokenizeUs),
    matchUs: round(matchUs),
    scoreUs: round(scoreUs),
    usageParseUs: round(usageParseUs),
    totalUs: round(bodyParseUs + renderUs + tokenizeUs + routeUs + usageParseUs),
    promptTokens: Math.round(tokens / m),
  };
}
