/**
 * Failed sign-ins per client address (pure: `now` is passed in). The first FREE failures cost
 * nothing (typos); after that each attempt must wait FIRST_WAIT_MS doubling with every further
 * failure (15 s, 30 s, 1 min, ... at most 15 minutes) after the last failure, and is refused
 * meanwhile without looking at the password.
 * A client is forgotten 15 minutes after its last failure. Successes do not reset the count (a
 * valid account must not buy guesses at another).
 */
export const FREE_FAILURES = 5;
const FIRST_WAIT_MS = 15_000;
const FORGET_MS = 15 * 60_000;
const MAX_WAIT_MS = 15 * 60_000;
const MAX_CLIENTS = 10_000;

interface Entry {
  failures: number;
  last: number;
}

/** How long this client must still wait before its next attempt counts (0: go ahead). */
export function waitMs(entry: Entry | undefined, now: number): number {
  if (!entry || now - entry.last >= FORGET_MS || entry.failures < FREE_FAILURES) return 0;
  const wait = Math.min(MAX_WAIT_MS, FIRST_WAIT_MS * 2 ** (entry.failures - FREE_FAILURES));
  return Math.max(0, entry.last + wait - now);
}

export function createSignInLimits() {
  const clients = new Map<string, Entry>();
  return {
    wait(client: string, now: number): number {
      return waitMs(clients.get(client), now);
    },
    fail(client: string, now: number): void {
      const entry = clients.get(client);
      const failures = entry && now - entry.last < FORGET_MS ? entry.failures + 1 : 1;
      clients.delete(client);
      clients.set(client, { failures, last: now });
      // Bounded memory: the least recently failed go first.
      for (const key of clients.keys()) {
        if (clients.size <= MAX_CLIENTS) break;
        clients.delete(key);
      }
    },
  };
}
