import { randomUUID } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { childEnv, ManagedProcess } from "../../../harness/proc.ts";
import { type GatewayOptions, GatewayProcess } from "./gateway.ts";
import { answers } from "./http.ts";
import type { KubeBackend } from "./kube.ts";
import { startKube } from "./kube.ts";
import { type NetNode, RUN_ENV, TestNetwork } from "./netns.ts";
import type { TruthSource } from "./truth.ts";
import { scaled, WaitAborted, waitFor } from "./wait.ts";

/**
 * The suite's Kubernetes: a kubelet and a controller in one object. Each pod is a mock-engine
 * (one process per pod, or several pods' engines packed into one process with `--hosts`) inside
 * a network namespace with its own address, plus a Pod object served by the fake API server the
 * gateway's real Kubernetes source watches.
 */

export const REPO_ROOT = fileURLToPath(new URL("../../..", import.meta.url));
export const CLI = join(REPO_ROOT, "src/cli.ts");
export const DEFAULT_MODEL = "Qwen/Qwen3-0.6B";
export const HTTP_PORT = 8000;
export const EVENTS_PORT = 5557;
export const REPLAY_PORT = 5558;

export interface EngineOptions {
  model: string;
  loras: string[];
  numGpuBlocks: number;
  blockSize: number;
  /** mock-engine `--speed` (timing model divisor) */
  speed: number;
  /** tokenizer directory for models the engine has no default for */
  tokenizer?: string;
  extraArgs: string[];
  /** extra environment for the engine process (e.g. LD_PRELOAD=libfaketime for a skewed clock) */
  env?: Record<string, string>;
}

export interface PodTemplate {
  namespace?: string;
  engine?: Partial<EngineOptions>;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export const ENGINE_DEFAULTS: EngineOptions = {
  model: DEFAULT_MODEL,
  loras: [],
  numGpuBlocks: 512,
  blockSize: 16,
  speed: 50,
  extraArgs: [],
};

export class EngineGroup {
  constructor(
    readonly process: ManagedProcess,
    readonly node: NetNode,
    readonly pods: Pod[],
  ) {}
}

export class Pod implements TruthSource {
  ready = false;
  deleted = false;
  uid = randomUUID();
  group!: EngineGroup;
  constructor(
    readonly namespace: string,
    readonly podName: string,
    public ip: string,
    public node: NetNode,
    readonly engine: EngineOptions,
    readonly template: PodTemplate,
  ) {}
  /** the gateway's name for it */
  get name(): string {
    return `${this.namespace}/${this.podName}`;
  }
  get http(): string {
    return `http://${this.ip}:${HTTP_PORT}`;
  }
  get model(): string {
    return this.engine.model;
  }
}

export interface ClusterOptions {
  /** start a gateway (default true) */
  gateway?: Partial<GatewayOptions> | false;
  /** log directory (default /tmp/kvsync-e2e/<run>) */
  logDir?: string;
}

export class Cluster {
  readonly pods = new Map<string, Pod>();
  gateway: GatewayProcess | null = null;
  private groups: EngineGroup[] = [];
  private seq = 0;
  private gatewayOptions: Partial<GatewayOptions> = {};

  private constructor(
    readonly net: TestNetwork,
    readonly kube: KubeBackend,
    readonly logDir: string,
  ) {}

  static async start(opts: ClusterOptions = {}): Promise<Cluster> {
    const net = await TestNetwork.create();
    const logDir = opts.logDir ?? join("/tmp/kvsync-e2e", `${net.prefix}-${Date.now()}`);
    mkdirSync(logDir, { recursive: true });
    let kube: KubeBackend;
    try {
      kube = await startKube(logDir);
    } catch (err) {
      await net.destroy();
      throw err;
    }
    const c = new Cluster(net, kube, logDir);
    if (opts.gateway !== false) {
      c.gatewayOptions = opts.gateway ?? {};
      try {
        c.gateway = await GatewayProcess.start({ kubeconfig: kube.kubeconfigPath, logDir, ...opts.gateway });
      } catch (err) {
        await c.stop().catch(() => {});
        throw err;
      }
    }
    return c;
  }

  /** Restart the gateway (a new process: empty index, new ports), engines untouched. */
  async restartGateway(): Promise<GatewayProcess> {
    if (this.gateway) await this.gateway.stop();
    this.gateway = null;
    this.gateway = await GatewayProcess.start({
      kubeconfig: this.kube.kubeconfigPath,
      logDir: this.logDir,
      ...this.gatewayOptions,
    });
    return this.gateway;
  }

  /** Stop everything: gateway, engines, API server, namespaces, bridge. */
  async stop(): Promise<void> {
    const errors: string[] = [];
    const attempt = async (label: string, f: () => Promise<void>) => {
      try {
        await f();
      } catch (err) {
        errors.push(`${label}: ${(err as Error).message}`);
      }
    };
    if (this.gateway) await attempt("gateway", () => this.gateway!.stop());
    await Promise.all(this.groups.map((g) => attempt(`engine ${g.node.ns}`, () => g.process.stop())));
    this.groups = [];
    await attempt("kube", () => this.kube.close());
    await attempt("network", () => this.net.destroy());
    if (errors.length) throw new Error(`cluster stop: ${errors.join("; ")}`);
  }

  private engineArgs(e: EngineOptions, hosts: string[]): string[] {
    const args = [
      "--import",
      "tsx",
      CLI,
      "mock-engine",
      "--host",
      hosts.length === 1 ? hosts[0] : "0.0.0.0",
      "--port",
      String(HTTP_PORT),
      "--events-endpoint",
      `tcp://*:${EVENTS_PORT}`,
      "--replay-endpoint",
      `tcp://*:${REPLAY_PORT}`,
      "--model",
      e.model,
      "--num-gpu-blocks",
      String(e.numGpuBlocks),
      "--block-size",
      String(e.blockSize),
      "--speed",
      String(e.speed),
    ];
    if (e.loras.length) args.push("--lora-modules", ...e.loras);
    if (e.tokenizer) args.push("--tokenizer", e.tokenizer);
    if (hosts.length > 1)
      args.push("--replicas", String(hosts.length), "--port-stride", "0", "--hosts", hosts.join(","));
    args.push(...e.extraArgs);
    return args;
  }

  private podObject(pod: Pod): Record<string, unknown> {
    const e = pod.engine;
    const labels: Record<string, string> = {
      app: "mock-engine",
      "model.aibrix.ai/name": e.model,
      "model.aibrix.ai/kv-events-enabled": "true",
      ...pod.template.labels,
    };
    const annotations: Record<string, string> = {
      "model.aibrix.ai/name": e.model,
      "kvsync.io/http-port": String(HTTP_PORT),
      "kvsync.io/kv-events-port": String(EVENTS_PORT),
      "kvsync.io/kv-replay-port": String(REPLAY_PORT),
      "kvsync.io/block-size": String(e.blockSize),
      ...pod.template.annotations,
    };
    if (e.loras.length) annotations["kvsync.io/lora-adapters"] = e.loras.join(",");
    const readyStatus = pod.ready ? "True" : "False";
    return {
      apiVersion: "v1",
      kind: "Pod",
      metadata: { name: pod.podName, namespace: pod.namespace, uid: pod.uid, labels, annotations },
      spec: {
        nodeName: pod.node.ns,
        containers: [
          {
            name: "engine",
            image: "kvsync/mock-engine:e2e",
            ports: [
              { name: "http", containerPort: HTTP_PORT, protocol: "TCP" },
              { name: "kv-events", containerPort: EVENTS_PORT, protocol: "TCP" },
              { name: "kv-replay", containerPort: REPLAY_PORT, protocol: "TCP" },
            ],
          },
        ],
      },
      status: {
        phase: "Running",
        hostIP: this.net.hostIp,
        podIP: pod.ip,
        podIPs: [{ ip: pod.ip }],
        conditions: [
          { type: "Initialized", status: "True" },
          { type: "ContainersReady", status: readyStatus },
          { type: "Ready", status: readyStatus },
          { type: "PodScheduled", status: "True" },
        ],
      },
    };
  }

  /**
   * Create pods, `perProcess` engines per process (one node namespace per process, one address
   * per pod). Each Pod object appears not-ready with its IP (as a kubelet reports a started
   * container), then turns Ready once its engine's /health answers.
   */
  async createPods(names: string[], template: PodTemplate = {}, perProcess = 1): Promise<Pod[]> {
    const engine: EngineOptions = { ...ENGINE_DEFAULTS, ...template.engine };
    const namespace = template.namespace ?? "default";
    const created: Pod[] = [];
    const starts: Promise<void>[] = [];
    for (let i = 0; i < names.length; i += perProcess) {
      const chunk = names.slice(i, i + perProcess);
      for (const n of chunk) {
        if (this.pods.has(`${namespace}/${n}`)) throw new Error(`pod ${namespace}/${n} exists`);
      }
      const node = await this.net.addNode(chunk.length);
      const pods = chunk.map((n, k) => new Pod(namespace, n, node.ips[k], node, engine, template));
      const proc = this.spawnEngine(node, engine);
      const group = new EngineGroup(proc, node, pods);
      this.groups.push(group);
      for (const p of pods) {
        p.group = group;
        this.pods.set(p.name, p);
        created.push(p);
        await this.kube.upsertPod(this.podObject(p));
      }
      starts.push(...pods.map((p) => this.markReadyWhenHealthy(p)));
    }
    await Promise.all(starts);
    return created;
  }

  private spawnEngine(node: NetNode, engine: EngineOptions): ManagedProcess {
    const label = `engine-${node.ns}`;
    return new ManagedProcess(
      label,
      ...this.net.execArgs(node, process.execPath, this.engineArgs(engine, node.ips)),
      join(this.logDir, `${label}-${this.seq++}.log`),
      { ...childEnv(RUN_ENV, String(process.pid)), ...engine.env },
    );
  }

  /**
   * The pod's engine crashes (SIGKILL) and its container restarts, as the kubelet does: the pod
   * turns not ready, a new engine starts (event seq from 0, empty cache), the pod turns ready
   * once /health answers. In place (same node and address) by default; with `newAddress` on a
   * new node and address, written to the same Pod object (an IP change).
   */
  async restartEngine(pod: Pod, opts: { newAddress?: boolean } = {}): Promise<void> {
    if (pod.group.pods.length !== 1) throw new Error(`pod ${pod.name} shares its engine process`);
    const old = pod.group;
    await old.process.kill();
    pod.ready = false;
    if (opts.newAddress) {
      this.net.removeNode(pod.node);
      const node = await this.net.addNode(1);
      pod.node = node;
      pod.ip = node.ips[0];
    }
    await this.kube.upsertPod(this.podObject(pod));
    const group = new EngineGroup(this.spawnEngine(pod.node, pod.engine), pod.node, [pod]);
    this.groups = this.groups.filter((g) => g !== old).concat(group);
    pod.group = group;
    await this.markReadyWhenHealthy(pod);
  }

  async createPod(name: string, template: PodTemplate = {}): Promise<Pod> {
    return (await this.createPods([name], template, 1))[0];
  }

  private async markReadyWhenHealthy(pod: Pod): Promise<void> {
    const proc = pod.group.process;
    await waitFor(
      `engine of pod ${pod.name} at ${pod.http} answers /health`,
      async () => {
        if (!proc.running) {
          throw new WaitAborted(`engine process ${proc.describeExit()}`);
        }
        return (await answers(`${pod.http}/health`)) ? true : "no answer yet";
      },
      { timeoutMs: scaled(60_000), intervalMs: 100 },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\nlog ${proc.logFile} tail:\n${proc.tail(1500)}`);
    });
    await this.setReady(pod, true);
  }

  async setReady(pod: Pod, ready: boolean): Promise<void> {
    pod.ready = ready;
    await this.kube.upsertPod(this.podObject(pod));
  }

  /**
   * Delete a pod as Kubernetes does: graceful deletion begins (deletionTimestamp: the pod stops
   * being ready), its engine gets SIGTERM (SIGKILL after the grace period), then the Pod object
   * goes (watchers see DELETED) and its network namespace is removed. Only for pods with an
   * engine process of their own. `preStop` runs between the start of the deletion and SIGTERM,
   * as a container's preStop hook does.
   */
  async deletePod(pod: Pod, opts: { preStop?: () => Promise<void> } = {}): Promise<void> {
    if (pod.group.pods.length !== 1)
      throw new Error(`pod ${pod.name} shares its engine process; delete its group`);
    await this.kube.markTerminating(pod.namespace, pod.podName);
    pod.ready = false;
    if (opts.preStop) await opts.preStop();
    await pod.group.process.stop();
    await this.kube.deletePod(pod.namespace, pod.podName);
    pod.deleted = true;
    this.pods.delete(pod.name);
    this.net.removeNode(pod.node);
    this.groups = this.groups.filter((g) => g !== pod.group);
  }

  /**
   * The pod comes back (same name, new uid) on a new node with a new address: a fresh engine
   * process whose event seq starts at 0 again.
   */
  async recreatePod(pod: Pod): Promise<Pod> {
    if (!pod.deleted) await this.deletePod(pod);
    return this.createPod(pod.podName, pod.template);
  }

  /**
   * Scale a "deployment": pods named `<base>-<k>` in the template's namespace. Scaling up adds
   * the lowest free indices; scaling down deletes the highest.
   */
  async scale(base: string, replicas: number, template: PodTemplate = {}): Promise<Pod[]> {
    const ns = template.namespace ?? "default";
    const mine = () =>
      [...this.pods.values()]
        .filter((p) => p.namespace === ns && p.podName.startsWith(`${base}-`))
        .sort((a, b) => Number(a.podName.slice(base.length + 1)) - Number(b.podName.slice(base.length + 1)));
    let current = mine();
    if (current.length < replicas) {
      const names: string[] = [];
      for (let k = 0; names.length + current.length < replicas; k++) {
        const n = `${base}-${k}`;
        if (!this.pods.has(`${ns}/${n}`)) names.push(n);
      }
      await this.createPods(names, template, 1);
    } else {
      for (const p of current.slice(replicas).reverse()) await this.deletePod(p);
    }
    current = mine();
    return current;
  }

  list(): Pod[] {
    return [...this.pods.values()];
  }

  get(name: string): Pod {
    const p = this.pods.get(name);
    if (!p) throw new Error(`no pod ${name}`);
    return p;
  }
}
