import assert from "node:assert/strict";
import { test } from "node:test";
import { Command } from "commander";
import {
  addDiscoveryOptions,
  DEFAULT_LABEL_SELECTOR,
  discoveryOptionsFrom,
} from "../../../src/discovery/index.ts";

function parse(argv: string[], env: Record<string, string> = {}) {
  const saved = { ...process.env };
  Object.assign(process.env, env);
  try {
    const cmd = addDiscoveryOptions(new Command("x").exitOverride().configureOutput({ writeErr: () => {} }));
    cmd.parse(argv, { from: "user" });
    return discoveryOptionsFrom(cmd.opts());
  } finally {
    for (const k of Object.keys(env)) if (!(k in saved)) delete process.env[k];
  }
}

test("discovery flags: defaults", () => {
  const o = parse([]);
  assert.equal(o.discovery, undefined);
  assert.equal(o.engines, undefined);
  assert.equal(o.namespaces, undefined);
  assert.equal(o.labelSelector, DEFAULT_LABEL_SELECTOR);
  assert.equal(o.resyncMs, 300_000);
  assert.equal(o.slowRequestMs, 1000);
});

test("discovery flags: namespaces repeatable and comma-separated, kubeconfig, resync", () => {
  const o = parse([
    "--discovery",
    "kubernetes",
    "--namespace",
    "a,b",
    "--namespace",
    "c",
    "--kubeconfig",
    "/k",
    "--resync-seconds",
    "0",
    "--label-selector",
    "app=vllm",
    "--discovery-slow-ms",
    "2500",
  ]);
  assert.deepEqual(o, {
    discovery: "kubernetes",
    engines: undefined,
    namespaces: ["a", "b", "c"],
    labelSelector: "app=vllm",
    kubeconfig: "/k",
    resyncMs: 0,
    slowRequestMs: 2500,
  });
});

test("discovery flags: environment twins", () => {
  const o = parse([], {
    KVSYNC_DISCOVERY: "static",
    KVSYNC_ENGINES: "/e.yaml",
    KVSYNC_NAMESPACE: "x, y",
    KVSYNC_DISCOVERY_SLOW_MS: "0",
  });
  assert.equal(o.slowRequestMs, 0);
  assert.equal(o.discovery, "static");
  assert.equal(o.engines, "/e.yaml");
  assert.deepEqual(o.namespaces, ["x", "y"]);
});

test("discovery flags: a bad --discovery is rejected", () => {
  assert.throws(() => parse(["--discovery", "consul"]), /expected static or kubernetes/);
});
