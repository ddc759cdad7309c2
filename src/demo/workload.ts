import { seededRandom } from "../util/rng.ts";
/**
 * The demo's workload: multi-turn chats of several tenants, each tenant with its own long system
 * prompt. Every turn re-sends the whole history (system prompt, earlier user turns and the
 * assistant's actual replies), the prefix-reuse pattern of real chat traffic. Everything that
 * does not come from the engine (tenants, prompts, turn counts, reply lengths) is a pure
 * function of the seed.
 */

export interface WorkloadOptions {
  seed: number;
  /** total requests (turns) across all conversations */
  requests: number;
  tenants: number;
  /** approximate words of each tenant's system prompt (~1.3 tokens per word) */
  systemPromptWords: number;
  /** turns per conversation: uniform in [min, max] */
  minTurns: number;
  maxTurns: number;
  /** words per user message: uniform in [min, max] */
  minUserWords: number;
  maxUserWords: number;
  /** max_tokens of each turn: uniform in [min, max] */
  minReplyTokens: number;
  maxReplyTokens: number;
}

export const WORKLOAD_DEFAULTS: Omit<WorkloadOptions, "seed" | "requests"> = {
  tenants: 4,
  systemPromptWords: 700,
  minTurns: 4,
  maxTurns: 10,
  minUserWords: 40,
  maxUserWords: 160,
  minReplyTokens: 32,
  maxReplyTokens: 128,
};

export interface Turn {
  user: string;
  maxTokens: number;
}

export interface Conversation {
  id: number;
  tenant: number;
  system: string;
  turns: Turn[];
}

export interface Workload {
  tenants: string[];
  conversations: Conversation[];
  /** = sum of turns = opts.requests */
  requests: number;
}

const VOCAB = (
  "account adapter alert archive audit balance batch billing branch budget cache cluster config " +
  "contract customer dashboard database deploy device discount driver export feature filter forecast " +
  "gateway invoice ledger license limit metric migration network order outage partner payment pipeline " +
  "policy portal price quota refund region release report request review router schedule schema " +
  "server service session shipment storage subscription support ticket token traffic upgrade user " +
  "vendor version warehouse window workflow always carefully clearly never politely quickly briefly " +
  "check confirm explain escalate verify summarize answer describe list compare recommend avoid"
).split(" ");

const TOPICS = [
  "retail banking",
  "cloud hosting",
  "airline bookings",
  "medical devices",
  "online groceries",
  "insurance claims",
  "telecom plans",
  "logistics",
  "video streaming",
  "public transport",
];

function words(rand: () => number, n: number): string {
  const out: string[] = [];
  for (let i = 0; i < n; i++) {
    let w = VOCAB[Math.floor(rand() * VOCAB.length)];
    // a number now and then, and sentence breaks, so prompts look like text, not a word list
    if (rand() < 0.06) w = `${w} ${Math.floor(rand() * 1000)}`;
    out.push(i % 14 === 13 ? `${w}.` : w);
  }
  return out.join(" ");
}

const between = (rand: () => number, min: number, max: number) => min + Math.floor(rand() * (max - min + 1));

export function validateWorkload(o: WorkloadOptions): void {
  const pos = (name: keyof WorkloadOptions, min = 1) => {
    const v = o[name];
    if (!Number.isInteger(v) || v < min) throw new Error(`${name} must be an integer >= ${min}, got ${v}`);
  };
  pos("requests");
  pos("tenants");
  pos("systemPromptWords");
  pos("minTurns");
  pos("minUserWords");
  pos("minReplyTokens");
  if (o.maxTurns < o.minTurns) throw new Error("maxTurns must be >= minTurns");
  if (o.maxUserWords < o.minUserWords) throw new Error("maxUserWords must be >= minUserWords");
  if (o.maxReplyTokens < o.minReplyTokens) throw new Error("maxReplyTokens must be >= minReplyTokens");
  if (!Number.isInteger(o.seed)) throw new Error(`seed must be an integer, got ${o.seed}`);
}

/**
 * Build the workload for a seed. Tenant popularity is skewed (tenant k is chosen with weight
 * 1/(k+1)) so some system prompts are hot; the last conversation is cut so that the turns add up
 * to exactly `requests`.
 */
export function generateWorkload(
  opts: Partial<WorkloadOptions> & { seed: number; requests: number },
): Workload {
  const o: WorkloadOptions = { ...WORKLOAD_DEFAULTS, ...opts };
  validateWorkload(o);
  const rand = seededRandom(o.seed * 2654435761 + 17);
  const tenants: string[] = [];
  for (let t = 0; t < o.tenants; t++) {
    const topic = TOPICS[t % TOPICS.length];
    tenants.push(
      `You are the support assistant of tenant ${t} (${topic}). Follow these instructions. ${words(rand, o.systemPromptWords)}`,
    );
  }
  const weights = tenants.map((_, k) => 1 / (k + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const pickTenant = () => {
    let x = rand() * total;
    for (let k = 0; k < weights.length; k++) {
      x -= weights[k];
      if (x < 0) return k;
    }
    return weights.length - 1;
  };
  const conversations: Conversation[] = [];
  let left = o.requests;
  while (left > 0) {
    const tenant = pickTenant();
    const n = Math.min(left, between(rand, o.minTurns, o.maxTurns));
    const turns: Turn[] = [];
    for (let i = 0; i < n; i++) {
      turns.push({
        user: `Question ${i + 1}: ${words(rand, between(rand, o.minUserWords, o.maxUserWords))}?`,
        maxTokens: between(rand, o.minReplyTokens, o.maxReplyTokens),
      });
    }
    conversations.push({ id: conversations.length, tenant, system: tenants[tenant], turns });
    left -= n;
  }
  return { tenants, conversations, requests: o.requests };
}
