import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { defaultTokenizerDir } from "../../src/tokenize/hf-tokenizer.ts";
import { DEFAULT_MODEL, type Pod } from "./harness/cluster.ts";
import { assertOk, completeDirect, gatewayOf, useCluster, waitLive } from "./harness/suite.ts";
import { waitIndexMatchesTruth } from "./harness/truth.ts";
import { scaled } from "./harness/wait.ts";
import { prefix, prompt } from "./harness/workload.ts";

// Two models in two Kubernetes namespaces, a LoRA adapter on one pod: nothing leaks across.
const MODEL_A = DEFAULT_MODEL;
const MODEL_B = "acme/qwen3-alt"; // same Qwen3 tokenizer, another model name
const LORA = "sql-lora";

describe("e2e multi-model: two models, two namespaces, one adapter", { timeout: scaled(240_000) }, () => {
  const tokDir = defaultTokenizerDir();
  const cluster = useCluster({ gateway: { tokenizers: { [MODEL_B]: tokDir } } });
  let a: Pod[];
  let b: Pod[];
  const all = () => [...a, ...b];
  const names = (ps: Pod[]) => ps.map((p) => p.name);

  it("pods of both models go live", async () => {
    const c = cluster();
    [a, b] = await Promise.all([
      Promise.all([
        c.createPod("qwen-0", { namespace: "team-a", engine: { model: MODEL_A, loras: [LORA] } }),
        c.createPod("qwen-1", { namespace: "team-a", engine: { model: MODEL_A } }),
      ]),
      c.createPods(["alt-0", "alt-1"], {
        namespace: "team-b",
        engine: { model: MODEL_B, tokenizer: tokDir },
      }),
    ]);
    await waitLive(gatewayOf(c), all());
    const listed = new Map((await gatewayOf(c).pods()).map((p) => [p.name, p.model]));
    for (const p of all()) assert.equal(listed.get(p.name), p.model, `model of ${p.name}`);
  });

  it("each request lands on a pod serving its model or adapter", async () => {
    const gw = gatewayOf(cluster());
    const sys = prefix("mm-shared", 500);
    for (let k = 0; k < 4; k++) {
      const text = prompt(sys, k);
      const ra = await gw.complete(MODEL_A, text);
      assertOk(ra, `model A ${k}`);
      assert.ok(names(a).includes(ra.pod!), `model A request served by ${ra.pod}`);
      const rb = await gw.complete(MODEL_B, text);
      assertOk(rb, `model B ${k}`);
      assert.ok(names(b).includes(rb.pod!), `model B request served by ${rb.pod}`);
      const rl = await gw.complete(LORA, text);
      assertOk(rl, `adapter ${k}`);
      assert.equal(rl.pod, a[0].name, `adapter request served by ${rl.pod}`);
    }
    await waitIndexMatchesTruth(gw, all());
  });

  it("no event or match leaks across models or adapters", async () => {
    const gw = gatewayOf(cluster());
    // a prefix only model B's pod alt-0 has seen
    const onlyB = prefix("mm-only-b", 501);
    await completeDirect(b[0], prompt(onlyB, 0));
    // a prefix only the adapter on qwen-0 has seen
    const onlyLora = prefix("mm-only-lora", 502);
    await completeDirect(a[0], prompt(onlyLora, 0), LORA);
    // a prefix only the base model on qwen-1 has seen
    const onlyA = prefix("mm-only-a", 503);
    await completeDirect(a[1], prompt(onlyA, 0));
    await waitIndexMatchesTruth(gw, all());

    const holders = async (model: string, text: string, lora?: string) =>
      (await gw.match(model, text, lora)).pods.filter((x) => x.matchedBlocks > 0).map((x) => x.pod);
    assert.deepEqual(await holders(MODEL_B, prompt(onlyB, 1)), [b[0].name]);
    assert.deepEqual(await holders(MODEL_A, prompt(onlyB, 1)), [], "model B blocks match under model A");
    assert.deepEqual(
      await holders(MODEL_A, prompt(onlyB, 1), LORA),
      [],
      "model B blocks match under the adapter",
    );
    assert.deepEqual(await holders(MODEL_A, prompt(onlyLora, 1), LORA), [a[0].name]);
    assert.deepEqual(await holders(MODEL_A, prompt(onlyLora, 1)), [], "adapter blocks match the base model");
    assert.deepEqual(await holders(MODEL_B, prompt(onlyLora, 1)), [], "adapter blocks match model B");
    assert.deepEqual(await holders(MODEL_A, prompt(onlyA, 1)), [a[1].name]);
    assert.deepEqual(await holders(MODEL_A, prompt(onlyA, 1), LORA), [], "base blocks match the adapter");
    assert.deepEqual(await holders(MODEL_B, prompt(onlyA, 1)), [], "model A blocks match model B");

    // routing follows: each request goes where its own model's cache is, never across
    const rb = await gw.complete(MODEL_B, prompt(onlyB, 2));
    assertOk(rb, "model B follow-up");
    assert.equal(rb.pod, b[0].name);
    assert.ok(rb.cachedTokens >= 64, `model B follow-up cached ${rb.cachedTokens}`);
    const rl = await gw.complete(LORA, prompt(onlyLora, 2));
    assertOk(rl, "adapter follow-up");
    assert.equal(rl.pod, a[0].name);
    assert.ok(rl.cachedTokens >= 64, `adapter follow-up cached ${rl.cachedTokens}`);
    const ra = await gw.complete(MODEL_A, prompt(onlyA, 2));
    assertOk(ra, "model A follow-up");
    assert.equal(ra.pod, a[1].name);
    assert.ok(ra.cachedTokens >= 64, `model A follow-up cached ${ra.cachedTokens}`);
    // model A asked with B's prefix: no pod of A holds it, and the engine confirms no hit
    const cross = await gw.complete(MODEL_A, prompt(onlyB, 3));
    assertOk(cross, "cross-model request");
    assert.ok(names(a).includes(cross.pod!), `cross-model request served by ${cross.pod}`);
    assert.equal(cross.cachedTokens, 0, "model A engine reports a hit on model B's prefix");
    if (cross.matchedTokens !== null)
      assert.equal(cross.matchedTokens, 0, "gateway predicted a cross-model hit");
    await waitIndexMatchesTruth(gw, all());
  });
});
