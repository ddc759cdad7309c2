/**
 * The event-source seam (src/events/event-source.ts): a subscriber over a transport that is not
 * ZeroMQ. The source here is an engine's replay buffer held in memory: what it "publishes" goes
 * to the subscriber as live frames, and it answers replays from the buffer. The subscriber's own
 * logic (gap → replay, restart → drop) must work over it unchanged.
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import type {
  EventSource,
  EventSourceFactory,
  EventSourceHandlers,
} from "../../../src/events/event-source.ts";
import type { DropReason } from "../../../src/events/seq-tracker.ts";
import { StreamSubscriber } from "../../../src/events/subscriber.ts";
import { encodePubMessage } from "../../../src/protocol/frames.ts";
import { waitFor } from "../../../src/util/wait.ts";
import { storeBatch } from "./rig.ts";

/** An engine's buffer in memory, as a source: `publish` sends live, `lose` only buffers. */
class MemorySource implements EventSource {
  readonly replays = true;
  readonly buffer = new Map<number, Uint8Array>();
  readonly replayRequests: number[] = [];
  private closed = false;

  constructor(private readonly on: EventSourceHandlers) {}

  start(): void {
    setImmediate(() => this.on.up());
  }

  publish(seq: number, payload: Uint8Array): void {
    this.buffer.set(seq, payload);
    if (!this.closed) this.on.frames(encodePubMessage("kv", seq, payload));
  }

  lose(seq: number, payload: Uint8Array): void {
    this.buffer.set(seq, payload);
  }

  requestReplay(fromSeq: number): void {
    this.replayRequests.push(fromSeq);
    // answers come later, as over a socket
    setImmediate(() => {
      if (this.closed) return;
      for (const seq of [...this.buffer.keys()].sort((a, b) => a - b))
        if (seq >= fromSeq) this.on.replay.message(seq, this.buffer.get(seq)!);
      this.on.replay.end();
      this.on.replay.settled();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

describe("event source: a subscriber over a transport that is not ZeroMQ", () => {
  const open: StreamSubscriber[] = [];
  after(() => Promise.all(open.map((s) => s.close())));

  it("applies in order, fills a gap by replay from the source, and drops on an engine restart", async () => {
    let source: MemorySource | null = null;
    const factory: EventSourceFactory = (_ends, _opts, on) => {
      source = new MemorySource(on);
      return source;
    };
    const applied: number[] = [];
    const drops: DropReason[] = [];
    const sub = new StreamSubscriber(
      { events: "memory://engine", replay: "memory://engine", topic: "" },
      {
        batch: (seq) => applied.push(seq),
        decodeError: (seq, err) => assert.fail(`decode error at ${seq}: ${err.message}`),
        drop: (reason) => drops.push(reason),
      },
      { tailCheckMs: 0 },
      factory,
    );
    open.push(sub);
    sub.start();
    const src = source as unknown as MemorySource;
    await waitFor("live after the initial replay", () => sub.state() === "live");
    assert.deepEqual(src.replayRequests, [0], "the initial replay asks the whole buffer");

    src.publish(0, storeBatch(1));
    src.publish(1, storeBatch(2));
    src.lose(2, storeBatch(3));
    src.publish(3, storeBatch(4));
    await waitFor("seq 3 applied", () => sub.lastSeq === 3 && sub.state() === "live", {
      describe: () => ({ applied, requests: src.replayRequests, state: sub.state() }),
    });
    assert.deepEqual(applied, [0, 1, 2, 3], "the lost batch came from the source's replay, in order");
    assert.equal(sub.gaps, 1);
    assert.ok(src.replayRequests.includes(2), `a replay from the gap: ${src.replayRequests}`);

    // a new engine process: its buffer starts over at seq 0 with other content
    src.buffer.clear();
    src.publish(0, storeBatch(50));
    await waitFor("restart handled", () => sub.restarts === 1 && sub.state() === "live", {
      describe: () => ({ applied, drops, requests: src.replayRequests, state: sub.state() }),
    });
    assert.deepEqual(drops, ["restart"]);
    assert.equal(sub.lastSeq, 0);
  });
});
