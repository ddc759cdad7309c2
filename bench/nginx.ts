/**
 * nginx as a plain reverse proxy over the engines, bench:gateway's reference for what a proxy
 * costs: Debian's nginx-light (installed with apt-get when missing), run with a generated config
 * on loopback, stopped with the bench's other children (gateway-load.ts).
 */
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "../src/util/free-port.ts";
import { waitFor } from "../src/util/wait.ts";
import { log, START_WAIT, tempDir, track } from "./gateway-load.ts";

function which(cmd: string): string | null {
  for (const dir of ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]) {
    try {
      execFileSync("test", ["-x", join(dir, cmd)]);
      return join(dir, cmd);
    } catch {
      // not there
    }
  }
  return null;
}

/** nginx binary, installed from Debian (nginx-light) when missing. */
function ensureNginx(): string {
  let bin = which("nginx");
  if (bin) return bin;
  if (process.getuid?.() !== 0) throw new Error("nginx is missing and installing it needs root");
  log("installing nginx-light (apt-get)...");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  const install = () =>
    execFileSync("apt-get", ["install", "-y", "--no-install-recommends", "nginx-light"], {
      env,
      stdio: "ignore",
    });
  try {
    install();
  } catch {
    execFileSync("apt-get", ["update"], { env, stdio: "ignore" });
    install();
  }
  // the package starts the system service on install: we run our own instance
  try {
    execFileSync("sh", ["-c", "service nginx stop || true"], { stdio: "ignore" });
  } catch {
    // no service manager
  }
  bin = which("nginx");
  if (!bin) throw new Error("nginx-light installed but no nginx binary found");
  return bin;
}

/** nginx balancing over `upstreams` (HTTP origins), once it answers `/health`. */
export async function startNginx(
  upstreams: string[],
): Promise<{ url: string; version: string; pid: number }> {
  const bin = ensureNginx();
  // nginx -v prints on stderr
  const v = spawnSync(bin, ["-v"], { encoding: "utf8" });
  const version = `${v.stderr ?? ""}${v.stdout ?? ""}`.trim();
  const dir = tempDir("kvsync-nginx-");
  const port = await freePort();
  const servers = upstreams.map((u) => `    server ${new URL(u).host};`).join("\n");
  const conf = `worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream engines {
${servers}
    keepalive 128;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://engines;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      client_max_body_size 16m;
    }
  }
}
`;
  writeFileSync(join(dir, "nginx.conf"), conf);
  const child = track(
    spawn(bin, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], {
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  let err = "";
  child.stderr!.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-2000);
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(
    `nginx on ${url} (${err})`,
    async () => {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${err}`);
      const r = await fetch(`${url}/health`);
      await r.arrayBuffer();
      return r.status === 200;
    },
    START_WAIT,
  );
  return { url, version, pid: child.pid! };
}
