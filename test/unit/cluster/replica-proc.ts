/**
 * A replica's load-sharing half in its own process, for the tests that kill it: joins the
 * cluster, claims `KVSYNC_TEST_TICKETS` requests on stream `p0`, prints "ready", then idles.
 */
import { Registry } from "prom-client";
import { ClusterLink } from "../../../src/cluster/link.ts";
import { LoadTracker } from "../../../src/routing/load.ts";
import { silentLogger } from "../../../src/util/log.ts";

const loads = new LoadTracker();
const link = new ClusterLink(
  { url: process.env.KVSYNC_TEST_NATS ?? "", name: "t", id: "child", heartbeatMs: 100 },
  loads,
  new Registry(),
  silentLogger(),
);
loads.share(link.remote, link);
link.start();
await link.connection(10_000);
const n = Number(process.env.KVSYNC_TEST_TICKETS ?? "3");
const tickets = Array.from({ length: n }, () => loads.begin("p0", 100));
process.stdout.write("ready\n");
setInterval(() => void tickets, 60_000);
