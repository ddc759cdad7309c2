import { readFileSync } from "node:fs";
import { seededRandom } from "../../../src/util/rng.ts";

/**
 * Deterministic prompts for the scenarios: seeded pseudo-random English-like text, so every run
 * sends the same tokens. Shared prefixes start with a distinct tag so two prefixes never share a
 * leading block.
 */
const WORDS = (
  "the of and to in is you that it he was for on are as with his they at be this have from or one " +
  "had by word but not what all were we when your can said there use an each which she do how their " +
  "if will up other about out many then them these so some her would make like him into time has look " +
  "two more write go see number no way could people my than first water been call who oil its now find " +
  "long down day did get come made may part over new sound take only little work know place year live " +
  "me back give most very after thing our just name good sentence man think say great where help through " +
  "much before line right too mean old any same tell boy follow came want show also around form three " +
  "small set put end does another well large must big even such because turn here why ask went men read " +
  "need land different home us move try kind hand picture again change off play spell air away animal " +
  "house point page letter mother answer found study still learn should america world high every near " +
  "add food between own below country plant last school father keep tree never start city earth eye light"
).split(" ");

export function words(seed: number, count: number): string {
  const r = seededRandom(seed);
  const out: string[] = [];
  for (let i = 0; i < count; i++) out.push(WORDS[Math.floor(r() * WORDS.length)]);
  return out.join(" ");
}

/** A shared prefix (system prompt): ~`count` words, led by a unique tag. */
export function prefix(tag: string, seed: number, count = 120): string {
  return `[${tag}] ${words(seed, count)}.`;
}

/** A prompt = prefix + a request-specific question. */
export function prompt(prefixText: string, seed: number, count = 40): string {
  return `${prefixText}\nQuestion ${seed}: ${words(seed * 7919 + 13, count)}?`;
}

/**
 * Requests of a Mooncake trace (`test/fixtures/traces/`): `hash_ids` are chained prefix-block
 * ids (equal id at position i = equal prefix up to i). Each id becomes a fixed chunk of text,
 * scaled down from 512 tokens to ~`wordsPerBlock` words, so the trace's prefix sharing (every
 * conversation request starts with block 0: a hot shared prefix) is kept at a cost two cores
 * can carry.
 */
export function loadTrace(file: string, limit: number): number[][] {
  const out: number[][] = [];
  for (const line of readFileSync(file, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as { hash_ids: number[] };
    out.push(r.hash_ids);
    if (out.length >= limit) break;
  }
  return out;
}

export function tracePrompt(hashIds: number[], wordsPerBlock = 24): string {
  return hashIds.map((id) => `<${id}> ${words(1_000_003 + id, wordsPerBlock)}`).join("\n");
}
