/** Programmatic API of the mock vLLM engine (see README.md in this folder). */
export { MockEngine, type Rank } from "./engine.ts";
export { DEFAULT_ENGINE_OPTIONS, type EngineOptions, type HashFormat } from "./options.ts";
export {
  ENGINE_FLAVORS,
  type EngineFlavor,
  type EventFormat,
  eraOf,
  offsetEndpoint,
  pubShouldBind,
  withHost,
} from "./publisher.ts";
export {
  type ReplicaOptions,
  type RunningEngine,
  replicaOptions,
  type StartOptions,
  sharedTokenizer,
  startEngine,
  startEngines,
} from "./start.ts";
