/**
 * The data-parallel layout fields of both discovery sources: the engines file's
 * `dataParallelStartRank` and the annotation `kvsync.io/data-parallel-start-rank`, with the
 * replay base port they are used with. (Collisions are refused by the subscriber manager, so a
 * pod with a colliding layout still reaches the pod set and shows in /admin/pods.)
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import type { V1Pod } from "@kubernetes/client-node";
import { ANNOTATIONS, PodSpecError, podInfoFromPod } from "../../../src/discovery/kubernetes-pods.ts";
import { endpointsDiffer } from "../../../src/discovery/pod-set.ts";
import { EnginesFileError, parseEnginesFile } from "../../../src/discovery/static-file.ts";

function k8sPod(ann: Record<string, string>): V1Pod {
  return {
    metadata: { name: "vllm-0", namespace: "ns", annotations: { "model.aibrix.ai/name": "m", ...ann } },
    status: { podIP: "10.0.0.7", conditions: [{ type: "Ready", status: "True" }] },
  };
}

test("annotations: data-parallel size, start rank and a separate replay base port", () => {
  const p = podInfoFromPod(
    k8sPod({
      [ANNOTATIONS.dataParallelSize]: "4",
      [ANNOTATIONS.dataParallelStartRank]: "4",
      [ANNOTATIONS.eventsPort]: "5557",
      [ANNOTATIONS.replayPort]: "5657",
    }),
  );
  assert.equal(p?.dataParallelSize, 4);
  assert.equal(p?.dataParallelStartRank, 4);
  assert.equal(p?.events, "tcp://10.0.0.7:5557");
  assert.equal(p?.replay, "tcp://10.0.0.7:5657");
  assert.equal(podInfoFromPod(k8sPod({}))?.dataParallelStartRank, undefined);
  assert.throws(
    () => podInfoFromPod(k8sPod({ [ANNOTATIONS.dataParallelStartRank]: "-1" })),
    (e: unknown) =>
      e instanceof PodSpecError && /data-parallel-start-rank: expected 0\.\.65535/.test(e.message),
  );
});

test("engines file: dataParallelStartRank is validated; a start rank change is an endpoint change", () => {
  const text = (extra: string) =>
    `engines:\n  - {name: a, model: m, http: "http://h:8000", events: "tcp://h:5557", replay: "tcp://h:5657", dataParallelSize: 2${extra}}\n`;
  const [p] = parseEnginesFile(text(", dataParallelStartRank: 2"), "e.yaml");
  assert.equal(p?.dataParallelStartRank, 2);
  assert.equal(parseEnginesFile(text(""), "e.yaml")[0]?.dataParallelStartRank, undefined);
  assert.throws(
    () => parseEnginesFile(text(", dataParallelStartRank: 1.5"), "e.yaml"),
    (e: unknown) => e instanceof EnginesFileError && e.field === "dataParallelStartRank",
  );
  assert.ok(endpointsDiffer(p!, { ...p!, dataParallelStartRank: 0 }));
});
