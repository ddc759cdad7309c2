/**
 * What the scale benchmark's publisher (scale-publisher.ts) and its request generator
 * (scale.bench.ts) share: the tenant system prompts every pod keeps cached.
 */
export const TENANTS = 16;
export const TENANT_BLOCKS = 8;
export const TENANTS_PER_POD = 3;
export const BLOCK_SIZE = 16;

/** Token j of tenant t's system prompt. */
export const tenantToken = (t: number, j: number) => 1000 + ((t * 7919 + j * 104_729) % 140_000);

/** The tenants pod `pod` holds. */
export const tenantsOf = (pod: number) =>
  Array.from({ length: TENANTS_PER_POD }, (_, i) => (pod * 5 + i * 7) % TENANTS);
