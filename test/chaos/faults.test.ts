import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { childEnv, isAlive, ManagedProcess, run } from "../../harness/proc.ts";
import { type Cluster, EVENTS_PORT, type Pod } from "../e2e/harness/cluster.ts";
import { GatewayProcess } from "../e2e/harness/gateway.ts";
import { answers } from "../e2e/harness/http.ts";
import { RUN_ENV } from "../e2e/harness/netns.ts";
import { useCluster } from "../e2e/harness/suite.ts";
import { scaled, waitFor } from "../e2e/harness/wait.ts";
import { Bandwidth } from "./faults/bandwidth.ts";
import { FaultNotInEffect, netTarget, tcpProbe } from "./faults/fault.ts";
import { KubeApiDelay } from "./faults/kube-delay.ts";
import { PacketLoss } from "./faults/packet-loss.ts";
import { Partition } from "./faults/partition.ts";
import { PodPause } from "./faults/pause.ts";
import { PortBlock } from "./faults/port-block.ts";
import { DEFAULT_ROUTES, RelayCorruption, RelayDelay, RelaySidecar } from "./faults/relay.ts";
import { SlowPipe } from "./faults/slow-pipe.ts";
import { descendants, Stress } from "./faults/stress.ts";
import { TimeSkew } from "./faults/time-skew.ts";

// Each injector of test/chaos/faults/: applied, its effect measured, removed, normal behaviour
// measured again. One cluster without a gateway; the faults target its pods' namespaces.

describe("chaos fault injectors", { timeout: scaled(240_000) }, () => {
  const cluster = useCluster({ gateway: false });
  let c: Cluster;
  let pod: Pod;
  let skewed: Pod;
  const skew = new TimeSkew(30);
  before(
    async () => {
      c = cluster();
      [pod, skewed] = await Promise.all([
        c.createPod("victim"),
        c.createPod("skewed", { engine: { env: skew.env() } }),
      ]);
      skew.probeUrl = `${skewed.http}/health`;
    },
    { timeout: scaled(60_000) },
  );

  it("partition: a TCP probe to the pod times out; removed, it connects again", async () => {
    const f = new Partition(netTarget(c.net, pod.node, pod.ip));
    await assert.rejects(f.verify(), FaultNotInEffect);
    await f.apply();
    try {
      const ev = await f.verify();
      assert.equal(ev.probe.outcome, "timeout");
      assert.ok(ev.droppedIn > 0);
      assert.equal((await tcpProbe(pod.ip, EVENTS_PORT, 1000)).outcome, "timeout");
    } finally {
      await f.remove();
    }
    assert.equal(f.active, false);
    assert.equal((await tcpProbe(pod.ip, EVENTS_PORT, 2000)).outcome, "open");
    assert.ok(await answers(`${pod.http}/health`, 2000));
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  it("port block: events and replay ports time out while HTTP /health answers", async () => {
    const f = new PortBlock(netTarget(c.net, pod.node, pod.ip));
    await f.apply();
    try {
      const ev = await f.verify();
      assert.equal(ev.blockedProbe.outcome, "timeout");
      assert.equal(ev.health.status, 200);
      assert.equal((await tcpProbe(pod.ip, 5558, 1000)).outcome, "timeout");
    } finally {
      await f.remove();
    }
    assert.equal((await tcpProbe(pod.ip, 5557, 2000)).outcome, "open");
    assert.equal((await tcpProbe(pod.ip, 5558, 2000)).outcome, "open");
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  it("kube api delay: a GET takes >= 2 s; removed, it is fast again", async () => {
    const f = new KubeApiDelay(c.kube, 2000);
    assert.ok((await f.probe()) < 1000);
    await f.apply();
    try {
      const ev = await f.verify();
      assert.ok(ev.probeMs >= 2000, `${ev.probeMs} ms`);
    } finally {
      await f.remove();
    }
    assert.ok((await f.probe()) < 1000);
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  it("time skew: the engine under libfaketime runs 30 s ahead, and back to 0 when removed", async () => {
    assert.ok(Math.abs(await skew.measure()) <= 2, "starts unskewed");
    await skew.apply();
    try {
      const ev = await skew.verify();
      assert.ok(Math.abs(ev.aheadSeconds - 30) <= 2, `${ev.aheadSeconds}s`);
      // monotonic time stays real: the engine's timers and HTTP keep working while skewed
      assert.ok(await answers(`${skewed.http}/health`, 2000));
    } finally {
      await skew.remove();
    }
    await waitFor(
      "skew gone",
      async () => {
        const a = await skew.measure();
        return Math.abs(a) <= 2 ? true : `ahead ${a}s`;
      },
      { timeoutMs: scaled(5000), intervalMs: 250 },
    );
  });

  it("pod failure: a SIGSTOPped engine stops answering; SIGCONT brings it back", async () => {
    const f = PodPause.half([pod, skewed]);
    assert.deepEqual(f.pods, [pod]);
    await f.apply();
    try {
      const ev = await f.verify();
      assert.equal(ev.probes[0].ok, false);
      assert.ok(await answers(`${skewed.http}/health`, 2000), "the other half keeps answering");
    } finally {
      await f.remove();
    }
    assert.ok(await answers(`${pod.http}/health`, 2000));
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  it("cpu stress: 2 stress-ng workers burn CPU until removed", async () => {
    const f = Stress.cpu({ logDir: c.logDir, ns: pod.node.ns, timeoutSeconds: 60 });
    await f.apply();
    const pid = f.pid!;
    try {
      const ev = await f.verify();
      assert.ok(ev.workers >= 2, `${ev.workers} workers`);
      assert.ok(ev.cpuPerSecond! >= 0.15);
    } finally {
      await f.remove();
    }
    assert.deepEqual(descendants(pid), []);
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  it("memory stress: a stress-ng worker holds >= 500 MB until removed", async () => {
    const f = Stress.memory({ logDir: c.logDir, ns: pod.node.ns, timeoutSeconds: 60 });
    await f.apply();
    const pid = f.pid!;
    try {
      const ev = await f.verify();
      assert.ok(ev.maxRssBytes! >= 500e6);
    } finally {
      await f.remove();
    }
    assert.deepEqual(descendants(pid), []);
  });

  it("packet loss: 50 % with 25 % correlation, measured both ways; removed, nothing is lost", async () => {
    const f = new PacketLoss(netTarget(c.net, pod.node, pod.ip), {
      directions: "both",
      hostIp: c.net.hostIp,
      logDir: c.logDir,
    });
    assert.deepEqual(f.thresholds, { afterDrop: 625, afterPass: 375 });
    await f.apply();
    try {
      const ev = await f.verify();
      for (const s of [ev.egress, ev.ingress!]) {
        assert.ok(Math.abs(s.lossRatio - 0.5) <= 0.1, JSON.stringify(s));
        assert.ok(s.afterLoss > s.afterDelivery + 0.1, `correlated: ${JSON.stringify(s)}`);
      }
      process.stderr.write(`packet loss measured: ${JSON.stringify(ev)}\n`);
      // TCP still gets through, slowly: a handshake through 50 % loss both ways fails often (a
      // SYN and its retransmits at 1, 3, 7 s, each with its SYN-ACK, all dropped), so a few
      // fresh connections are tried; one answering proves TCP is degraded, not cut
      let ok = false;
      const until = Date.now() + scaled(60_000);
      while (!ok && Date.now() < until) ok = await answers(`${pod.http}/health`, 10_000);
      assert.ok(ok, "no /health answer through the lossy link in 60 s");
    } finally {
      await f.remove();
    }
    const after = await f.measure();
    assert.equal(after.egress.lost, 0, JSON.stringify(after));
    assert.equal(after.ingress!.lost, 0, JSON.stringify(after));
  });

  it("bandwidth: transfers both ways run at ~1 Mbit/s; removed, at full speed", async () => {
    const f = new Bandwidth(netTarget(c.net, pod.node, pod.ip), { logDir: c.logDir });
    const before = await f.measure();
    await f.apply();
    try {
      const ev = await f.verify();
      process.stderr.write(`bandwidth measured: ${JSON.stringify({ before, during: ev })}\n`);
      assert.ok(ev.downloadMbit <= 1.5 && ev.downloadMbit >= 0.3, `${ev.downloadMbit}`);
      assert.ok(ev.uploadMbit <= 1.5 && ev.uploadMbit >= 0.3, `${ev.uploadMbit}`);
    } finally {
      await f.remove();
    }
    const after = await f.measure();
    assert.ok(after.downloadMbit > 5 && after.uploadMbit > 5, JSON.stringify(after));
    await assert.rejects(f.verify(), FaultNotInEffect);
  });

  describe("relay sidecar", () => {
    const BLOB = 256 * 1024;
    let relay: RelaySidecar;
    // a server whose every connection gets BLOB bytes of a known pattern (byte i = i % 251)
    const pattern = (i: number) => i % 251;
    const readBlob = (port: number): Promise<Buffer> =>
      new Promise((resolve, reject) => {
        const parts: Buffer[] = [];
        const s = connect({ host: pod.ip, port });
        s.on("data", (d) => parts.push(d));
        s.on("end", () => resolve(Buffer.concat(parts)));
        s.on("error", reject);
        s.setTimeout(30_000, () => s.destroy(new Error("blob read timed out")));
      });
    const mismatches = (b: Buffer) => {
      let n = 0;
      for (let i = 0; i < b.length; i++) if (b[i] !== pattern(i)) n++;
      return n;
    };

    before(async () => {
      new ManagedProcess(
        "blob-server",
        ...c.net.execArgs(pod.node, process.execPath, [
          "-e",
          `const b = Buffer.alloc(${BLOB}); for (let i = 0; i < b.length; i++) b[i] = i % 251;
           require("node:net").createServer((s) => s.end(b)).listen(19001, "${pod.ip}")`,
        ]),
        join(c.logDir, "blob-server.log"),
        childEnv(RUN_ENV, String(process.pid)),
      );
      relay = await RelaySidecar.start({
        ns: pod.node.ns,
        ip: pod.ip,
        logDir: c.logDir,
        routes: [...DEFAULT_ROUTES, { name: "blob", listenPort: 19000, targetPort: 19001 }],
      });
      await waitFor(
        "blob through the relay",
        async () => ((await readBlob(19000).catch(() => Buffer.alloc(0))).length === BLOB ? true : "short"),
        { timeoutMs: scaled(15_000), intervalMs: 100 },
      );
    });

    it("delay: RTT through the relay is 500 ± 100 ms, bytes in order; removed, fast again", async () => {
      const f = new RelayDelay(relay);
      const base = await f.measure(3);
      assert.ok(Math.max(...base) < 200, `passthrough RTT ${base}`);
      await assert.rejects(f.verify(), FaultNotInEffect);
      await f.apply();
      try {
        const ev = await f.verify();
        process.stderr.write(`relay delay measured: ${JSON.stringify(ev)}\n`);
        for (const ms of ev.rttMs) assert.ok(ms >= 400 && ms <= 800, `${ev.rttMs}`);
        const blob = await readBlob(19000);
        assert.equal(blob.length, BLOB);
        assert.equal(mismatches(blob), 0, "jittered chunks stay in order");
        assert.ok((await relay.stats()).delayedChunks > 0);
      } finally {
        await f.remove();
      }
      const after = await f.measure(3);
      assert.ok(Math.max(...after) < 200, `passthrough RTT ${after}`);
    });

    it("corruption: about half the chunks reach the reader with flipped bytes; removed, clean", async () => {
      const f = new RelayCorruption(relay, { routes: ["blob"] });
      assert.equal(mismatches(await readBlob(19000)), 0);
      await f.apply();
      let observed = 0;
      try {
        for (let i = 0; i < 8; i++) observed += mismatches(await readBlob(19000));
        const ev = await f.verify();
        process.stderr.write(`relay corruption measured: ${JSON.stringify({ ...ev, observed })}\n`);
        assert.ok(observed > 0, "the reader sees corrupted bytes");
        assert.ok(observed <= ev.corruptedBytes, `${observed} > ${ev.corruptedBytes}`);
        assert.ok(ev.chunks >= 8, `${ev.chunks} chunks`);
        const ratio = ev.corruptedChunks / ev.chunks;
        assert.ok(ratio > 0.2 && ratio < 0.8, `corrupted ${ev.corruptedChunks}/${ev.chunks}`);
      } finally {
        await f.remove();
      }
      assert.equal(mismatches(await readBlob(19000)), 0);
      await assert.rejects(f.verify(), FaultNotInEffect);
    });
  });

  it("io stress: the gateway's log goes through a pipe whose reader sleeps 100 ms before half its reads", async () => {
    const logFile = join(c.logDir, "gateway-slow-pipe.log");
    const pipe = await SlowPipe.start({ logDir: c.logDir, logFile });
    const gw = await GatewayProcess.start({
      kubeconfig: c.kube.kubeconfigPath,
      logDir: c.logDir,
      output: pipe.fd,
      env: { KVSYNC_LOG_LEVEL: "info" },
    });
    try {
      await waitFor(
        "gateway log lines drained into the log file",
        () => (readFileSync(logFile, "utf8").includes('"component"') ? true : "nothing yet"),
        { timeoutMs: scaled(10_000), intervalMs: 100 },
      );
      const before = await pipe.probeWrite();
      await pipe.apply();
      let ev: Awaited<ReturnType<SlowPipe["verify"]>>;
      try {
        ev = await pipe.verify();
        process.stderr.write(`slow pipe measured: ${JSON.stringify({ before, ...ev })}\n`);
        assert.ok(ev.probeWriteMs >= 300 && ev.probeWriteMs > 3 * before, `${before} -> ${ev.probeWriteMs}`);
        const ratio = ev.delayedReads / ev.reads;
        // the reader's coin (about half); the slowdown above is what the writer feels
        assert.ok(ratio > 0.1 && ratio < 0.9, `${ev.delayedReads}/${ev.reads} reads delayed`);
        assert.ok(gw.process.running);
      } finally {
        await pipe.remove();
      }
      const after = await pipe.probeWrite();
      assert.ok(after < ev.probeWriteMs / 3, `after removal ${after} ms`);
      assert.match(readFileSync(logFile, "utf8"), /chaos_io_probe/);
    } finally {
      await gw.stop();
      await pipe.stop();
    }
  });

  it("a crashed run leaves no fault behind (stress workers, relay, slow pipe, nft table, qdisc)", async () => {
    const here = (f: string) => JSON.stringify(new URL(f, import.meta.url).pathname);
    const script = `
      import { TestNetwork } from ${here("../e2e/harness/netns.ts")};
      import { netTarget } from ${here("./faults/fault.ts")};
      import { Partition } from ${here("./faults/partition.ts")};
      import { Bandwidth } from ${here("./faults/bandwidth.ts")};
      import { Stress } from ${here("./faults/stress.ts")};
      import { SlowPipe } from ${here("./faults/slow-pipe.ts")};
      import { RelaySidecar } from ${here("./faults/relay.ts")};
      import { descendants } from ${here("./faults/stress.ts")};
      const logDir = ${JSON.stringify(c.logDir)};
      const net = await TestNetwork.create();
      const node = await net.addNode(1);
      const t = netTarget(net, node);
      await new Partition(t).apply();
      await new Bandwidth(t, { logDir }).apply();
      const stress = Stress.cpu({ logDir, workers: 1, loadPercent: 10 });
      await stress.apply();
      const pipe = await SlowPipe.start({ logDir, logFile: logDir + "/crash-pipe.log" });
      await pipe.apply();
      const relay = await RelaySidecar.start({ ns: node.ns, ip: node.ips[0], logDir });
      await new Promise((r) => setTimeout(r, 500));
      const pids = [stress.pid, ...descendants(stress.pid), pipe.reader.pid, relay.process.pid];
      console.log(JSON.stringify({ prefix: net.prefix, hostLink: t.hostLink, pids, fifo: pipe.fifo }));
      setTimeout(() => { throw new Error("simulated crash"); }, 100);
    `;
    const child = spawn(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    child.stderr.on("data", (d) => {
      stderr += d;
    });
    const exited = new Promise<number | null>((r) => child.once("exit", r));
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    const code = await exited;
    assert.equal(code, 1, stderr.slice(-2000));
    assert.match(stderr, /simulated crash/);
    const info = JSON.parse(out.split("\n").find((l) => l.startsWith("{")) ?? "null") as {
      prefix: string;
      hostLink: string;
      pids: number[];
      fifo: string;
    } | null;
    assert.ok(info, `child printed no state: ${out} ${stderr.slice(-1000)}`);
    assert.ok(info.pids.length >= 4, `${info.pids}`);
    await waitFor(
      "every fault process killed",
      () => {
        const alive = info.pids.filter(isAlive);
        return alive.length === 0 ? true : `alive: ${alive}`;
      },
      { timeoutMs: scaled(5000) },
    );
    assert.equal(existsSync(info.fifo), false, "FIFO removed");
    const nsList = await run("ip", ["netns", "list"]);
    assert.ok(!nsList.includes(`${info.prefix}-`), nsList);
    const links = await run("ip", ["-o", "link", "show"]);
    assert.ok(!links.includes(info.hostLink), "host veth (and its qdisc) removed");
  });
});
