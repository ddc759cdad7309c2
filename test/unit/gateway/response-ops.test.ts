/**
 * `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel` through the gateway: each goes to
 * the engine that made the response (only its memory holds it), with the official `openai`
 * client; an id the gateway never saw is an OpenAI-style 404. Two `kvsync mock-engine` child
 * processes (real HTTP), the gateway in this process.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import OpenAI from "openai";
import type { PodInfo } from "../../../src/discovery/types.ts";
import { type RunningGateway, startGateway } from "../../../src/gateway/gateway.ts";
import { silentLogger } from "../../../src/util/log.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { type EngineProcess, EPHEMERAL, startEngineProcess } from "../../helpers/engine-process.ts";
import { MODEL } from "./fleet.ts";

describe("gateway: stored responses are retrieved and cancelled on their engine", {
  timeout: 240_000,
}, () => {
  let engines: EngineProcess[] = [];
  let gw: RunningGateway;
  let client: OpenAI;

  before(async () => {
    engines = await Promise.all([
      // fast: its responses finish at once; slow: a background one is still running when cancelled
      startEngineProcess(
        ["--speed", "20", "--min-output-tokens", "4", "--max-output-tokens", "8"],
        EPHEMERAL,
        90_000,
      ),
      startEngineProcess(
        ["--speed", "0.05", "--min-output-tokens", "400", "--max-output-tokens", "400"],
        EPHEMERAL,
        90_000,
      ),
    ]);
    const pods: PodInfo[] = engines.map((e, i) => ({
      name: `pod-${i}`,
      model: MODEL,
      loras: [],
      http: e.http,
      events: e.events,
      replay: e.replay,
      dataParallelSize: 1,
      ready: true,
    }));
    gw = await startGateway({ pods, subscribe: false, tokenizerPool: false, log: silentLogger() });
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "unused", maxRetries: 0 });
  });

  after(async () => {
    await gw?.close();
    await Promise.all(engines.map((e) => e.close()));
  });

  /** A response made through the gateway, and the pod that made it. */
  async function create(body: Record<string, unknown>): Promise<{ id: string; pod: string; status: string }> {
    const r = await client.responses
      .create({ model: MODEL, input: "What does the gateway route by?", max_output_tokens: 400, ...body })
      .withResponse();
    return { id: r.data.id, pod: r.response.headers.get("x-kvsync-pod") ?? "", status: r.data.status ?? "" };
  }

  it("retrieves each response from the engine that stored it (JSON and streamed ones)", async () => {
    const seen = new Set<string>();
    for (let i = 0; i < 8; i++) {
      const made = await create({ stream: false });
      seen.add(made.pod);
      const got = await client.responses.retrieve(made.id).withResponse();
      assert.equal(got.data.id, made.id);
      assert.equal(got.data.status === "completed" || got.data.status === "incomplete", true);
      assert.equal(got.response.headers.get("x-kvsync-pod"), made.pod);
    }
    const stream = await client.responses.create({ model: MODEL, input: "Stream this.", stream: true });
    let id = "";
    for await (const ev of stream) if (ev.type === "response.completed") id = ev.response.id;
    assert.ok(id.startsWith("resp"));
    assert.equal((await client.responses.retrieve(id)).id, id);
    assert.ok(seen.size >= 1);
  });

  it("cancels a background response on its engine; a finished one cannot be", async () => {
    let bg: { id: string; pod: string; status: string } | undefined;
    // the load picks the pod: keep asking until the slow engine has one running
    await waitFor(
      "a background response on the slow engine",
      async () => {
        const made = await create({ background: true });
        assert.equal(made.status, "queued");
        if (made.pod === "pod-1") bg = made;
        return bg !== undefined;
      },
      60_000,
    );
    const id = (bg as { id: string }).id;
    assert.equal((await client.responses.retrieve(id)).status, "in_progress");
    const cancelled = await client.responses.cancel(id);
    assert.equal(cancelled.status, "cancelled");
    assert.equal((await client.responses.retrieve(id)).status, "cancelled");
    // a second cancel: no longer running, vLLM's 400
    await assert.rejects(
      client.responses.cancel(id),
      (err: InstanceType<typeof OpenAI.APIError>) => err.status === 400,
    );
  });

  it("an id the gateway never saw is an OpenAI-style 404 (retrieve and cancel)", async () => {
    for (const [method, path] of [
      ["GET", "/v1/responses/resp_never_seen"],
      ["POST", "/v1/responses/resp_never_seen/cancel"],
    ] as const) {
      const r = await fetch(`${gw.url}${path}`, { method });
      assert.equal(r.status, 404);
      const body = (await r.json()) as {
        error: { message: string; type: string; code: string; param: string };
      };
      assert.equal(body.error.type, "invalid_request_error");
      assert.equal(body.error.code, "response_not_found");
      assert.match(body.error.message, /resp_never_seen/);
    }
    await assert.rejects(
      client.responses.retrieve("resp_nope"),
      (err: InstanceType<typeof OpenAI.APIError>) => err.status === 404,
    );
  });

  it("a malformed percent-encoded id is a JSON 404 at the gateway and the engine, never a 500", async () => {
    for (const base of [gw.url, engines[0].http]) {
      const r = await fetch(`${base}/v1/responses/resp_%E0%A4%A`);
      assert.equal(r.status, 404, base);
      const body = (await r.json()) as { error: { type: string; message: string } };
      assert.ok(body.error.message.length > 0 && body.error.type.length > 0, JSON.stringify(body));
    }
  });
});
