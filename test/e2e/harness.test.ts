import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { runCleanups } from "../../harness/cleanup.ts";
import { isAlive, ManagedProcess, run } from "../../harness/proc.ts";
import { answers } from "./harness/http.ts";
import { RUN_ENV, sweepStale, TestNetwork } from "./harness/netns.ts";
import { scaled, waitFor } from "./harness/wait.ts";

// The harness itself: namespaces, addresses, cleanup on interrupt, the sweeper of dead runs.
const HARNESS = fileURLToPath(new URL("./harness", import.meta.url));
const SHARED_HARNESS = fileURLToPath(new URL("../../harness", import.meta.url));

async function namespaces(): Promise<string[]> {
  return (await run("ip", ["netns", "list"]))
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0])
    .filter(Boolean);
}

async function links(): Promise<string[]> {
  return (await run("ip", ["-o", "link", "show"]))
    .split("\n")
    .map((l) => l.split(":")[1]?.trim().split("@")[0])
    .filter(Boolean) as string[];
}

describe("e2e harness", { timeout: scaled(90_000) }, () => {
  after(async () => {
    await runCleanups();
  });

  it("pods get their own addresses in their own namespaces, reachable from the gateway's side", async () => {
    const net = await TestNetwork.create();
    const a = await net.addNode(2);
    const b = await net.addNode(1);
    assert.notEqual(a.ns, b.ns);
    assert.equal(new Set([...a.ips, ...b.ips, net.hostIp]).size, 4);
    for (const ip of [...a.ips, ...b.ips]) assert.match(ip, /^198\.1[89]\./);
    // a server bound on the second address of node a answers there and only there
    const srv = new ManagedProcess(
      "probe-server",
      ...net.execArgs(a, process.execPath, [
        "-e",
        `require("http").createServer((q, s) => s.end(q.socket.localAddress)).listen(8000, "${a.ips[1]}")`,
      ]),
      "/dev/null",
    );
    await waitFor(
      "probe server answers",
      async () => ((await answers(`http://${a.ips[1]}:8000/`)) ? true : "no"),
      {
        timeoutMs: scaled(10_000),
        intervalMs: 50,
      },
    );
    const got = await (await fetch(`http://${a.ips[1]}:8000/`)).text();
    assert.equal(got, a.ips[1]);
    assert.equal(await answers(`http://${a.ips[0]}:8000/`, 500), false);
    // not visible in the root namespace: the port is free there
    assert.equal(await answers("http://127.0.0.1:8000/", 300), false);
    await srv.stop();
    await net.destroy();
    const left = (await namespaces()).filter((n) => n.startsWith(`${net.prefix}-`));
    assert.deepEqual(left, [], "namespaces left behind");
    assert.deepEqual(
      (await links()).filter((l) => l.startsWith(net.prefix)),
      [],
      "links left behind",
    );
  });

  it("an interrupted run (SIGINT) removes its namespaces, links and processes", async () => {
    const script = `
      import { TestNetwork, RUN_ENV } from ${JSON.stringify(join(HARNESS, "netns.ts"))};
      import { ManagedProcess } from ${JSON.stringify(join(SHARED_HARNESS, "proc.ts"))};
      const net = await TestNetwork.create();
      const n = await net.addNode(1);
      const p = new ManagedProcess("sleeper", ...net.execArgs(n, "sleep", ["300"]), "/dev/null",
        { ...process.env, [RUN_ENV]: String(process.pid) });
      console.log(JSON.stringify({ prefix: net.prefix, sleeper: p.pid }));
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    const info = await new Promise<{ prefix: string; sleeper: number }>((resolve, reject) => {
      let buf = "";
      child.stdout.on("data", (d) => {
        buf += d;
        const line = buf.split("\n").find((l) => l.startsWith("{"));
        if (line) resolve(JSON.parse(line));
      });
      child.once("exit", (code) => reject(new Error(`child exited early (${code})`)));
    });
    assert.ok((await namespaces()).some((n) => n.startsWith(`${info.prefix}-`)));
    assert.ok(isAlive(info.sleeper));
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGINT");
    await exited;
    assert.deepEqual(
      (await namespaces()).filter((n) => n.startsWith(`${info.prefix}-`)),
      [],
    );
    assert.deepEqual(
      (await links()).filter((l) => l.startsWith(info.prefix)),
      [],
    );
    await waitFor("sleeper killed", () => (isAlive(info.sleeper) ? "alive" : true), {
      timeoutMs: 5000,
      intervalMs: 50,
    });
  });

  it("the sweeper removes what a killed run left (namespace, link, process)", async () => {
    // a pid that is certainly dead: a process that has exited
    const dead = spawnSync("true").pid!;
    assert.equal(isAlive(dead), false);
    const ns = `kvs${dead}-n0`;
    const link = `kvs${dead}b`;
    await run("ip", ["netns", "add", ns]);
    await run("ip", ["link", "add", "name", link, "type", "bridge"]);
    const orphan = spawn("ip", ["netns", "exec", ns, "sleep", "300"], {
      detached: true,
      stdio: "ignore",
      env: { ...process.env, [RUN_ENV]: String(dead) },
    });
    await waitFor(
      "orphan running",
      async () => ((await run("ip", ["netns", "pids", ns])).trim() ? true : "no"),
      {
        timeoutMs: 5000,
        intervalMs: 50,
      },
    );
    const removed = await sweepStale();
    assert.ok(removed.includes(`netns ${ns}`), `sweeper removed ${removed.join(", ")}`);
    assert.ok(removed.includes(`link ${link}`), `sweeper removed ${removed.join(", ")}`);
    assert.ok(!(await namespaces()).includes(ns));
    assert.ok(!(await links()).includes(link));
    await waitFor("orphan killed", () => (isAlive(orphan.pid!) ? "alive" : true), {
      timeoutMs: 5000,
      intervalMs: 50,
    });
  });
});
