/**
 * Issue 13's subscriber faults on real ZeroMQ sockets: bogus seqs that no replay reaches,
 * undecodable batches the engine's buffer still holds, corruption windows.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { encodePubMessage } from "../../../src/protocol/frames.ts";
import { pollUntil } from "../../helpers/wait.ts";
import { waitFor } from "./fake-publisher.ts";
import { held, metric, podOf, type Rig, rig, storeBatch } from "./rig.ts";

const rigs: Rig[] = [];
after(async () => {
  for (const r of rigs.reverse()) await r.close();
});

async function until(
  what: string,
  cond: () => Promise<boolean>,
  timeoutMs = 10_000,
  detail: () => unknown = () => "",
): Promise<void> {
  await pollUntil(
    cond,
    timeoutMs,
    20,
    () => new Error(`timed out waiting for ${what} ${JSON.stringify(detail())}`),
  );
}

async function liveRig(...args: Parameters<typeof rig>): Promise<Rig> {
  const r = await rig(...args);
  rigs.push(r);
  r.manager.setPods([podOf("p", { events: r.pub.pubEndpoint, replay: r.pub.replayEndpoint })]);
  await r.pub.waitSubscribed();
  await waitFor("live", () => r.manager.status("p")?.state === "live");
  return r;
}

describe("subscriber: a live seq beyond the engine's newest", () => {
  it("asks a bounded number of replays, discards the seq as bogus and goes on", async () => {
    const r = await liveRig();
    const { pub, manager, index, registry } = r;
    for (let s = 0; s < 3; s++) await pub.publish(s, storeBatch(s + 1));
    await waitFor("seq 2", () => manager.status("p")?.lastSeq === 2);
    const before = pub.requests.length;
    // a corrupted frame: a seq the engine never published, live only
    await pub.sendRaw(encodePubMessage(pub.topic, 1_000_000, storeBatch(99)));
    await until(
      "kvsync_subscriber_bogus_seqs_total 1",
      async () => (await metric(registry, "kvsync_subscriber_bogus_seqs_total", { stream: "p" })) === 1,
      10_000,
      () => ({ replays: pub.requests.length - before }),
    );
    // a loop would keep asking: after the bound, nothing more for a while
    const settled = pub.requests.length;
    await new Promise((res) => setTimeout(res, 1000));
    assert.equal(pub.requests.length, settled, `replays kept coming: ${pub.requests.length - before}`);
    assert.ok(settled - before <= 4, `${settled - before} replays for one bogus seq`);
    assert.equal(await metric(registry, "kvsync_subscriber_bogus_seqs_total", { stream: "p" }), 1);
    await pub.publish(3, storeBatch(4));
    await waitFor("seq 3", () => manager.status("p")?.lastSeq === 3 && manager.status("p")?.state === "live");
    assert.deepEqual(held(index, "p"), ["1", "2", "3", "4"]);
    assert.equal(manager.status("p")?.resyncs, 0);
    assert.equal(manager.status("p")?.restarts, 0);
  });
});

describe("subscriber: undecodable batches", () => {
  it("a live batch garbled on the way is applied from the engine's replay buffer, in order", async () => {
    const { pub, manager, index, registry } = await liveRig();
    await pub.publish(0, storeBatch(1));
    await waitFor("seq 0", () => manager.status("p")?.lastSeq === 0);
    // the engine's buffer holds the good batch; the wire delivered garbage for it
    await pub.publish(1, storeBatch(2), false);
    await pub.sendRaw(encodePubMessage(pub.topic, 1, Buffer.from([0xc1, 0xc1, 0xc1])));
    await pub.publish(2, storeBatch(3));
    await waitFor(
      "seq 2, live",
      () => manager.status("p")?.lastSeq === 2 && manager.status("p")?.state !== "replaying",
      10_000,
      () => manager.status("p"),
    );
    assert.deepEqual(held(index, "p"), ["1", "2", "3"]);
    const st = manager.status("p");
    assert.equal(st?.decodeErrors, 1);
    assert.equal(st?.resyncs, 0);
    assert.deepEqual(pub.requests.slice(1), [1]);
    assert.equal(await metric(registry, "kvsync_subscriber_decode_repairs_total", { stream: "p" }), 1);
  });
});
