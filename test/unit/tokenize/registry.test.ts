import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import {
  DEFAULT_MODEL,
  defaultTokenizerDir,
  HfTokenizer,
  parseTokenizerSpec,
  RemoteTokenizer,
  TokenizerError,
  TokenizerPool,
  TokenizerRegistry,
} from "../../../src/tokenize/index.ts";

const registries: TokenizerRegistry[] = [];
after(async () => {
  await Promise.all(registries.map((r) => r.close()));
});
function registry(...args: ConstructorParameters<typeof TokenizerRegistry>): TokenizerRegistry {
  const r = new TokenizerRegistry(...args);
  registries.push(r);
  return r;
}

const configError = (re: RegExp) => (e: unknown) =>
  e instanceof TokenizerError && e.code === "config" && re.test(e.message);

describe("parseTokenizerSpec", () => {
  test("local, remote and remote:url specs", () => {
    const dir = defaultTokenizerDir();
    assert.deepEqual(parseTokenizerSpec(`Qwen/Qwen3-0.6B=${dir}`), {
      model: "Qwen/Qwen3-0.6B",
      kind: "local",
      dir,
    });
    assert.deepEqual(parseTokenizerSpec("org/m=remote"), { model: "org/m", kind: "remote", baseUrl: null });
    assert.deepEqual(parseTokenizerSpec("m=remote:http://127.0.0.1:8000"), {
      model: "m",
      kind: "remote",
      baseUrl: "http://127.0.0.1:8000",
    });
  });

  test("clear errors for malformed specs", () => {
    assert.throws(() => parseTokenizerSpec("just-a-model"), configError(/"just-a-model".*missing "="/));
    assert.throws(() => parseTokenizerSpec("=remote"), configError(/empty model name/));
    assert.throws(() => parseTokenizerSpec("m="), configError(/empty tokenizer location/));
    assert.throws(() => parseTokenizerSpec("m=remote:not a url"), configError(/invalid URL/));
    assert.throws(() => parseTokenizerSpec("m=remote:ftp://x/"), configError(/must be http/));
    const empty = mkdtempSync(join(tmpdir(), "kvsync-reg-"));
    try {
      assert.throws(() => parseTokenizerSpec(`m=${empty}`), configError(/no tokenizer\.json in/));
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

describe("TokenizerRegistry", () => {
  test("has the default Qwen3 model; unknown models get a clear error", async () => {
    const r = registry({ pool: false });
    assert.deepEqual(r.models(), [DEFAULT_MODEL]);
    const t = await r.get(DEFAULT_MODEL);
    assert.ok(t instanceof HfTokenizer);
    assert.deepEqual(await t.encodePrompt("Hello world"), [9707, 1879]);
    assert.equal(await r.get(DEFAULT_MODEL), t, "one instance per model");
    await assert.rejects(
      r.get("nope/model"),
      (e: unknown) =>
        e instanceof TokenizerError &&
        e.code === "unknown_model" &&
        /nope\/model/.test(e.message) &&
        /Qwen\/Qwen3-0\.6B/.test(e.message),
    );
  });

  test("specs add models, override the default and can drop it", async () => {
    const dir = defaultTokenizerDir();
    const r = registry({
      specs: [`alias/qwen=${dir}`, `${DEFAULT_MODEL}=remote:http://127.0.0.1:9`],
      pool: false,
    });
    assert.deepEqual(r.models().sort(), ["Qwen/Qwen3-0.6B", "alias/qwen"]);
    assert.equal(r.spec(DEFAULT_MODEL)?.kind, "remote");
    const alias = await r.get("alias/qwen");
    assert.equal(alias.model, "alias/qwen");
    assert.ok((await r.get(DEFAULT_MODEL)) instanceof RemoteTokenizer);
    const none = TokenizerRegistry.fromSpecs([], { includeDefault: false });
    registries.push(none);
    assert.deepEqual(none.models(), []);
    assert.throws(() => TokenizerRegistry.fromSpecs(["bad"]), configError(/missing "="/));
  });

  test("remote specs need an engine URL; instances are per URL", async () => {
    const r = registry({ specs: ["m=remote"] });
    await assert.rejects(r.get("m"), configError(/no engine URL/));
    const a = await r.get("m", { baseUrl: "http://127.0.0.1:1" });
    const b = await r.get("m", { baseUrl: "http://127.0.0.1:2" });
    assert.ok(a instanceof RemoteTokenizer && b instanceof RemoteTokenizer);
    assert.notEqual(a, b);
    assert.equal(await r.get("m", { baseUrl: "http://127.0.0.1:1" }), a);
    await assert.rejects(r.get("m", { baseUrl: "nope" }), configError(/invalid base URL/));
  });

  test("local tokenizers are pooled by default", async () => {
    const r = registry({ pool: { size: 1 } });
    const t = await r.get(DEFAULT_MODEL);
    assert.ok(t instanceof TokenizerPool);
    assert.deepEqual(
      await t.encodeChat({ messages: [{ role: "user", content: "Hello world" }] }),
      [151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198],
    );
  });
});
