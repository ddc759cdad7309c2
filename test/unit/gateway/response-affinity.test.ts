/**
 * `previous_response_id`: the follow-up goes to the pod that answered (stored) the response,
 * whichever the load would pick, learned from JSON answers and from streams' final event; a
 * follow-up to an id the gateway never saw routes by load. Two scripted HTTP pods.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { type RunningGateway, startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { fakePodInfo, MODEL, startFakePod } from "./fleet.ts";

describe("gateway: responses stay on the pod that stored them", { timeout: 30_000 }, () => {
  const pods: Array<Awaited<ReturnType<typeof startFakePod>>> = [];
  let gw: RunningGateway;
  let n = 0;

  before(async () => {
    for (const name of ["a", "b"]) {
      pods.push(
        await startFakePod((req, res) => {
          let body = "";
          req.on("data", (c) => {
            body += c;
          });
          req.on("end", () => {
            const id = `resp_${name}_${n++}`;
            const usage = { input_tokens: 3, input_tokens_details: { cached_tokens: 0 }, output_tokens: 1 };
            if ((JSON.parse(body) as { stream?: boolean }).stream) {
              res.writeHead(200, { "content-type": "text/event-stream" });
              const done = { type: "response.completed", sequence_number: 0, response: { id, usage } };
              res.end(`event: response.completed\ndata: ${JSON.stringify(done)}\n\n`);
              return;
            }
            res.writeHead(200, { "content-type": "application/json" });
            res.end(JSON.stringify({ id, object: "response", usage }));
          });
        }),
      );
    }
    gw = await startGateway({
      pods: pods.map((p, i) => fakePodInfo(`pod-${["a", "b"][i]}`, p.url)),
      subscribe: false,
      tokenizers: false,
      health: false,
      log: silentLogger(),
    });
  });

  after(async () => {
    await gw?.close();
    await Promise.all(pods.map((p) => p.close()));
  });

  const post = async (body: Record<string, unknown>) => {
    const r = await fetch(`${gw.url}/v1/responses`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, ...body }),
    });
    const text = await r.text();
    assert.equal(r.status, 200, text);
    const pod = r.headers.get("x-kvsync-pod")!;
    const id = text.startsWith("{")
      ? (JSON.parse(text) as { id: string }).id
      : (JSON.parse(text.split("data: ")[1]) as { response: { id: string } }).response.id;
    return { pod, id };
  };

  it("follow-ups go where the response was stored (JSON and streamed answers)", async () => {
    for (const stream of [false, true]) {
      const first = await post({ input: "hello", stream });
      const seen = new Set<string>();
      let prev = first.id;
      for (let i = 0; i < 6; i++) {
        const next = await post({ input: "more", previous_response_id: prev, stream });
        seen.add(next.pod);
        prev = next.id;
      }
      assert.deepEqual([...seen], [first.pod], `stream=${stream}`);
    }
  });

  it("an unknown id routes by load (both pods get some)", async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 6; i++)
      seen.add((await post({ input: "x", previous_response_id: `resp_unknown_${i}` })).pod);
    assert.equal(seen.size, 2);
  });
});
