import assert from "node:assert/strict";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { after, before, describe, test } from "node:test";
import {
  type ChatRequestLike,
  type HfTokenizer,
  loadTokenizer,
  RemoteTokenizer,
  TokenizerError,
} from "../../../src/tokenize/index.ts";
import { mixedText } from "./reference.ts";

/** A vLLM-style /tokenize + /detokenize server backed by the local tokenizer (stand-in engine). */
let local: HfTokenizer;
let server: Server;
let baseUrl: string;
const bodies: Array<Record<string, unknown>> = [];
let mode: "ok" | "500" | "garbage" | "badtokens" = "ok";

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(typeof body === "string" ? body : JSON.stringify(body));
}

const remotes: RemoteTokenizer[] = [];
function remote(url = baseUrl): RemoteTokenizer {
  const r = new RemoteTokenizer({
    baseUrl: url,
    model: "Qwen/Qwen3-0.6B",
    eosTokenIds: [151645],
    timeoutMs: 5000,
  });
  remotes.push(r);
  return r;
}

before(async () => {
  local = await loadTokenizer();
  server = createServer(async (req, res) => {
    const body = await readBody(req);
    bodies.push(body);
    if (mode === "500") return send(res, 500, { error: { message: "engine exploded" } });
    if (mode === "garbage") return send(res, 200, "<html>");
    if (mode === "badtokens") return send(res, 200, { tokens: ["a"] });
    try {
      if (req.url === "/tokenize") {
        const tokens =
          "messages" in body
            ? local.encodeChatSync(body as unknown as ChatRequestLike)
            : local.encodePromptSync(
                body.prompt as string,
                (body.add_special_tokens as boolean | undefined) ?? true,
              );
        return send(res, 200, { tokens, count: tokens.length, max_model_len: 40960 });
      }
      if (req.url === "/detokenize")
        return send(res, 200, { prompt: local.decodeSync(body.tokens as number[]) });
      return send(res, 404, { error: { message: "not found" } });
    } catch (e) {
      return send(res, 400, { error: { message: (e as Error).message } });
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  await Promise.all(remotes.map((r) => r.close()));
  await new Promise<void>((r) => server.close(() => r()));
});

describe("RemoteTokenizer", () => {
  test("ids and texts equal the engine's (completion, chat, decode)", async () => {
    mode = "ok";
    const r = remote();
    const prompt = mixedText(11, 400);
    assert.deepEqual(await r.encodePrompt(prompt), local.encodePromptSync(prompt));
    assert.deepEqual(bodies.at(-1), { model: "Qwen/Qwen3-0.6B", prompt, add_special_tokens: true });
    assert.equal(r.maxModelLen, 40960);

    const chat: ChatRequestLike = {
      messages: [
        { role: "system", content: "be brief" },
        {
          role: "user",
          content: [
            { type: "text", text: "你好" },
            { type: "text", text: "🎉" },
          ],
        },
      ],
      tools: [{ type: "function", function: { name: "f" } }],
      chat_template_kwargs: { enable_thinking: false },
    };
    assert.deepEqual(await r.encodeChat(chat), local.encodeChatSync(chat));
    const sent = bodies.at(-1)!;
    assert.equal(sent.add_generation_prompt, true);
    assert.equal(sent.add_special_tokens, false);
    assert.deepEqual(sent.chat_template_kwargs, { enable_thinking: false });
    assert.equal(await r.renderChat(chat), local.renderChatSync(chat));
    assert.equal(await r.decode([9707, 1879]), "Hello world");
    assert.deepEqual(r.eosTokenIds, [151645]);
  });

  test("engine errors map to typed errors", async () => {
    const r = remote();
    mode = "ok";
    await assert.rejects(
      r.encodeChat({ messages: [{ role: "user", content: [{ type: "image_url" }] }] }),
      (e: unknown) => e instanceof TokenizerError && e.code === "bad_request" && /HTTP 400/.test(e.message),
    );
    mode = "500";
    await assert.rejects(
      r.encodePrompt("x"),
      (e: unknown) => e instanceof TokenizerError && e.code === "remote" && /engine exploded/.test(e.message),
    );
    mode = "garbage";
    await assert.rejects(
      r.encodePrompt("x"),
      (e: unknown) => e instanceof TokenizerError && /non-JSON/.test(e.message),
    );
    mode = "badtokens";
    await assert.rejects(
      r.encodePrompt("x"),
      (e: unknown) =>
        e instanceof TokenizerError && e.code === "remote" && /not an array of token ids/.test(e.message),
    );
    mode = "ok";
  });

  test("unreachable engine and bad configuration", async () => {
    // a port that was just free: bind, read the port, close
    const tmp = createServer();
    await new Promise<void>((r) => tmp.listen(0, "127.0.0.1", r));
    const port = (tmp.address() as AddressInfo).port;
    await new Promise<void>((r) => tmp.close(() => r()));
    const r = remote(`http://127.0.0.1:${port}`);
    await assert.rejects(
      r.encodePrompt("x"),
      (e: unknown) => e instanceof TokenizerError && e.code === "remote",
    );
    assert.throws(
      () => new RemoteTokenizer({ baseUrl: "file:///x", model: "m" }),
      (e: unknown) => e instanceof TokenizerError && e.code === "config",
    );
    await r.close();
    await assert.rejects(
      r.encodePrompt("x"),
      (e: unknown) => e instanceof TokenizerError && e.code === "closed",
    );
  });
});
