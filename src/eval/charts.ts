/**
 * SVG charts of an evaluation, drawn with Vega (headless: no canvas, no DOM): hit rate and TTFT
 * p90 against load, and requests per pod per policy.
 */
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse, type Spec, View } from "vega";
import type { EvalResult, SweepPoint } from "./run.ts";

const WIDTH = 520;
const HEIGHT = 300;

function lineSpec(
  title: string,
  yTitle: string,
  rows: Array<{ x: number; y: number; policy: string }>,
  yLog: boolean,
): Spec {
  return {
    $schema: "https://vega.github.io/schema/vega/v6.json",
    width: WIDTH,
    height: HEIGHT,
    padding: 8,
    background: "white",
    title: { text: title },
    data: [{ name: "t", values: rows }],
    scales: [
      {
        name: "x",
        type: "linear",
        domain: { data: "t", field: "x" },
        range: "width",
        nice: true,
        zero: false,
      },
      yLog
        ? { name: "y", type: "log", domain: { data: "t", field: "y" }, range: "height", nice: true }
        : {
            name: "y",
            type: "linear",
            domain: { data: "t", field: "y" },
            range: "height",
            nice: true,
            zero: true,
          },
      { name: "c", type: "ordinal", domain: { data: "t", field: "policy" }, range: "category" },
    ],
    axes: [
      { orient: "bottom", scale: "x", title: "load (requests/s)", grid: true },
      { orient: "left", scale: "y", title: yTitle, grid: true },
    ],
    legends: [{ stroke: "c", title: "policy", symbolType: "stroke" }],
    marks: [
      {
        type: "group",
        from: { facet: { name: "series", data: "t", groupby: "policy" } },
        marks: [
          {
            type: "line",
            from: { data: "series" },
            sort: { field: "datum.x" },
            encode: {
              enter: {
                x: { scale: "x", field: "x" },
                y: { scale: "y", field: "y" },
                stroke: { scale: "c", field: "policy" },
                strokeWidth: { value: 2 },
              },
            },
          },
          {
            type: "symbol",
            from: { data: "series" },
            encode: {
              enter: {
                x: { scale: "x", field: "x" },
                y: { scale: "y", field: "y" },
                fill: { scale: "c", field: "policy" },
                size: { value: 30 },
              },
            },
          },
        ],
      },
    ],
  };
}

function podsSpec(title: string, rows: Array<{ pod: string; n: number; policy: string }>): Spec {
  return {
    $schema: "https://vega.github.io/schema/vega/v6.json",
    width: WIDTH,
    height: HEIGHT,
    padding: 8,
    background: "white",
    title: { text: title },
    data: [{ name: "t", values: rows }],
    scales: [
      { name: "x", type: "band", domain: { data: "t", field: "policy" }, range: "width", padding: 0.2 },
      {
        name: "y",
        type: "linear",
        domain: { data: "t", field: "n" },
        range: "height",
        nice: true,
        zero: true,
      },
      { name: "c", type: "ordinal", domain: { data: "t", field: "pod" }, range: "category" },
    ],
    axes: [
      { orient: "bottom", scale: "x", title: "policy" },
      { orient: "left", scale: "y", title: "requests", grid: true },
    ],
    legends: [{ fill: "c", title: "pod" }],
    marks: [
      {
        type: "group",
        from: { facet: { name: "bars", data: "t", groupby: "policy" } },
        encode: { enter: { x: { scale: "x", field: "policy" }, width: { scale: "x", band: 1 } } },
        signals: [{ name: "w", update: "bandwidth('x')" }],
        scales: [{ name: "p", type: "band", range: "width", domain: { data: "bars", field: "pod" } }],
        marks: [
          {
            type: "rect",
            from: { data: "bars" },
            encode: {
              enter: {
                x: { scale: "p", field: "pod" },
                width: { scale: "p", band: 1 },
                y: { scale: "y", field: "n" },
                y2: { scale: "y", value: 0 },
                fill: { scale: "c", field: "pod" },
              },
            },
          },
        ],
      },
    ],
  };
}

export async function renderSvg(spec: Spec): Promise<string> {
  const view = new View(parse(spec), { renderer: "none" });
  const svg = await view.toSVG();
  view.finalize();
  return svg;
}

/** Write hit-rate.svg, ttft-p90.svg and requests-per-pod.svg under `dir` (prefixed); returns the paths. */
export async function writeCharts(
  dir: string,
  r: EvalResult,
  sweep: SweepPoint[],
  prefix = "",
): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const hit: Array<{ x: number; y: number; policy: string }> = [];
  const ttft: Array<{ x: number; y: number; policy: string }> = [];
  for (const pt of sweep) {
    for (const [policy, v] of Object.entries(pt.policies)) {
      hit.push({ x: pt.ratePerSecond, y: v.hitRate * 100, policy });
      if (Number.isFinite(v.ttftP90Ms) && v.ttftP90Ms > 0)
        ttft.push({ x: pt.ratePerSecond, y: v.ttftP90Ms, policy });
    }
    hit.push({ x: pt.ratePerSecond, y: pt.infiniteCacheHitRate * 100, policy: "infinite cache" });
  }
  const pods = Object.values(r.policies).flatMap((p) =>
    p.requestsPerPod.map((n, i) => ({ pod: `pod-${i}`, n, policy: p.policy })),
  );
  const what = `${r.workload.source.split("/").pop()}, ${r.fleet.pods} pods x ${r.fleet.cacheBlocks} blocks`;
  const files: Array<[string, Spec]> = [
    [`${prefix}hit-rate.svg`, lineSpec(`Prefix hit rate against load (${what})`, "hit rate (%)", hit, false)],
    [`${prefix}ttft-p90.svg`, lineSpec(`TTFT p90 against load (${what})`, "TTFT p90 (ms, log)", ttft, true)],
    [
      `${prefix}requests-per-pod.svg`,
      podsSpec(`Requests per pod at ${r.workload.ratePerSecond.toFixed(2)} req/s (${what})`, pods),
    ],
  ];
  const out: string[] = [];
  for (const [name, spec] of files) {
    const p = join(dir, name);
    writeFileSync(p, await renderSvg(spec));
    out.push(p);
  }
  return out;
}
