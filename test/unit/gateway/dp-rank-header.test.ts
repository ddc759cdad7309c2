/**
 * The `X-data-parallel-rank` a pod running a slice of a larger DP group gets: the rank's index
 * within the pod, not its global rank. vLLM's front end indexes the engines it manages with the
 * header (`core_engines[eng_index]`, vllm/v1/engine/core_client.py `DPLBAsyncMPClient.
 * get_core_engine_for_request`), and with hybrid or external load balancing those are the
 * pod's own ranks only (`engine_ranks_managed = range(start, start + data_parallel_size_local)`):
 * header 0 is the global rank `--data-parallel-start-rank`. The events of the same rank carry the
 * global rank (docs/events.md); the gateway keys the stream by the local one.
 */
import assert from "node:assert/strict";
import { after, test } from "node:test";
import { startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { fakePodInfo, MODEL, post, startFakePod } from "./fleet.ts";

const cleanups: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

const okBody = JSON.stringify({
  id: "x",
  object: "text_completion",
  created: 1,
  model: MODEL,
  choices: [{ index: 0, text: "ok", finish_reason: "length", logprobs: null }],
  usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 },
});

test("a pod with data-parallel start rank 4 and 2 ranks gets X-data-parallel-rank 0 and 1", async () => {
  const ranks: string[] = [];
  const pod = await startFakePod((req, res) => {
    ranks.push(String(req.headers["x-data-parallel-rank"]));
    req.resume();
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end(okBody));
  });
  cleanups.push(() => pod.close());
  const gw = await startGateway({
    pods: [fakePodInfo("slice", pod.url, { dataParallelSize: 2, dataParallelStartRank: 4 })],
    subscribe: false,
    tokenizers: false,
    log: silentLogger(),
    policy: "round-robin",
  });
  cleanups.push(() => gw.close());
  const served = new Set<string>();
  for (let i = 0; i < 4; i++) {
    const r = await post(`${gw.url}/v1/completions`, { model: MODEL, prompt: "x" });
    assert.equal(r.status, 200);
    served.add(`${r.headers.get("x-kvsync-pod")}#${r.headers.get("x-kvsync-rank")}`);
  }
  assert.deepEqual([...served].sort(), ["slice#0", "slice#1"]);
  assert.deepEqual(ranks.sort(), ["0", "0", "1", "1"]);
});
