/**
 * The architecture rule of src/, checked by `npm run lint:arch` (part of `npm test`).
 *
 * src/ is layered by folder. A module may import its own folder and the folders of lower layers,
 * never a higher one, so a change low in the stack (the wire format, the index) never has to know
 * about the HTTP side. A new folder under src/ fails this check until it is given a layer below.
 *
 * Type-only imports count: a type pulled from a higher layer couples the layers just as much.
 *
 * bench/ and harness/ are checked too: a bench imports nothing from test/ (harness/ holds what
 * both start), so a test refactor never breaks a bench.
 */

/** lowest first; within a layer, folders do not import each other unless the layer says so */
const LAYERS = [
  { folders: ["util"] },
  { folders: ["protocol"] },
  { folders: ["index", "tokenize", "discovery"] },
  { folders: ["events", "routing"] },
  // gateway replicas that route as one: shared load and catch-up over NATS, above the events and routing they share
  { folders: ["cluster"] },
  // the gateway and the admin API both serve a fleet: they may share code, without cycles
  { folders: ["gateway", "admin"], siblings: true },
  // the mock engine: a separate program that shares the wire format and the tokenizer
  { folders: ["engine"] },
  // the demo: mock engines + gateway on loopback, and the workload that drives them
  { folders: ["demo"] },
  // the evaluator: the index and the policies in a simulator; its --live mode runs the demo's fleet
  { folders: ["eval"] },
  { folders: ["commands"] },
];

const known = LAYERS.flatMap((l) => l.folders);
const any = (folders) => `^src/(${folders.join("|")})/`;

const layerRules = LAYERS.flatMap((layer, i) => {
  const higher = LAYERS.slice(i + 1).flatMap((l) => l.folders);
  return layer.folders.map((folder) => {
    const forbiddenTo = [...higher, ...(layer.siblings ? [] : layer.folders.filter((f) => f !== folder))];
    return {
      name: `layer-${folder}`,
      comment: `src/${folder}/ may import only its own folder and lower layers (.dependency-cruiser.cjs LAYERS)`,
      severity: "error",
      from: { path: `^src/${folder}/` },
      to: { path: forbiddenTo.length > 0 ? any(forbiddenTo) : "^$" },
    };
  });
});

module.exports = {
  forbidden: [
    ...layerRules,
    {
      name: "engine-stands-apart",
      comment: "the mock engine does not import the router side: it stands in for vLLM",
      severity: "error",
      from: { path: "^src/engine/" },
      to: { path: any(["index", "discovery", "events", "routing"]) },
    },
    {
      name: "unlayered-folder",
      comment: "every folder of src/ has a layer: add it to LAYERS in .dependency-cruiser.cjs",
      severity: "error",
      from: { path: "^src/[^/]+/", pathNot: any(known) },
      to: {},
    },
    {
      name: "cli-on-top",
      comment: "only src/cli.ts sits above src/commands/; nothing imports it",
      severity: "error",
      from: {},
      to: { path: "^src/cli\\.ts$" },
    },
    {
      name: "no-circular",
      comment: "no import cycles, within a folder or across",
      severity: "error",
      from: { path: "^src/" },
      to: { circular: true },
    },
    {
      name: "not-to-test-or-bench",
      comment: "src/ is shipped: it imports nothing from test/ or bench/",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "^(test|bench)/" },
    },
    {
      name: "bench-not-to-test",
      comment: "benches import nothing from test/: what both start (processes, nats-server, engines) lives in harness/",
      severity: "error",
      from: { path: "^bench/" },
      to: { path: "^test/" },
    },
    {
      name: "harness-stands-below",
      comment: "harness/ serves test/ and bench/ alike, so it imports neither",
      severity: "error",
      from: { path: "^harness/" },
      to: { path: "^(test|bench)/" },
    },
    {
      name: "not-to-harness",
      comment: "src/ is shipped: the test and bench harness is not",
      severity: "error",
      from: { path: "^src/" },
      to: { path: "^harness/" },
    },
    {
      name: "not-to-dev-dep",
      comment: "src/ is shipped without devDependencies (npm prune --omit=dev in the image)",
      severity: "error",
      from: { path: "^src/" },
      to: { dependencyTypes: ["npm-dev"], dependencyTypesNot: ["type-only"] },
    },
    {
      name: "not-to-unresolvable",
      comment: "every import resolves",
      severity: "error",
      from: { path: "^src/" },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: "node_modules" },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: "tsconfig.json" },
    enhancedResolveOptions: { exportsFields: ["exports"], conditionNames: ["import", "require", "node", "default"] },
  },
};
