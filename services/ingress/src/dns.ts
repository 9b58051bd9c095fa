import { Resolver as DnsResolver } from 'node:dns/promises';

/** A DNS lookup as mailauth and node:dns/promises `resolve` do it: records of one type. */
export type Resolver = (name: string, rrtype: string) => Promise<unknown[]>;

/** The system resolver, one try per server, each within `timeoutMs`. */
export function systemResolver(timeoutMs: number): Resolver {
  const resolver = new DnsResolver({ timeout: timeoutMs, tries: 1 });
  return (name, rrtype) => resolver.resolve(name, rrtype) as Promise<unknown[]>;
}

/**
 * Give up on a lookup after `timeoutMs` with an ETIMEOUT error (as node:dns reports it), so that no
 * resolver, slow or injected, can hold a session longer than that.
 */
export function withTimeout(resolver: Resolver, timeoutMs: number): Resolver {
  return (name, rrtype) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(Object.assign(new Error(`DNS ${rrtype} ${name}: timed out`), { code: 'ETIMEOUT' })), timeoutMs);
      timer.unref();
      Promise.resolve()
        .then(() => resolver(name, rrtype))
        .then(
          (records) => {
            clearTimeout(timer);
            resolve(records);
          },
          (error: unknown) => {
            clearTimeout(timer);
            reject(error);
          },
        );
    });
}

/** Answers that are facts about the name ("no such name", "no such record") and may be cached. */
const DEFINITE = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * Remember answers (and "no such name / record") for `ttlMs`, and share one lookup among callers
 * asking the same question at once. Mail from one sender domain asks the same few questions over
 * and over; Postfix leaves this to a local caching resolver, which many hosts lack. Timeouts and
 * server failures are not remembered. At most `maxEntries` answers are kept (oldest dropped first).
 */
export function cachingResolver(resolver: Resolver, options: { ttlMs: number; maxEntries: number; now?: () => number }): Resolver {
  const now = options.now ?? Date.now;
  const answers = new Map<string, { expires: number; records?: unknown[]; error?: unknown }>();
  const pending = new Map<string, Promise<unknown[]>>();
  return async (name, rrtype) => {
    const key = `${rrtype} ${name.toLowerCase()}`;
    const known = answers.get(key);
    if (known && known.expires > now()) {
      if (known.error) throw known.error;
      return known.records ?? [];
    }
    let lookup = pending.get(key);
    if (!lookup) {
      lookup = resolver(name, rrtype);
      pending.set(key, lookup);
      const remember = (entry: { records?: unknown[]; error?: unknown }) => {
        pending.delete(key);
        answers.delete(key);
        answers.set(key, { expires: now() + options.ttlMs, ...entry });
        if (answers.size > options.maxEntries) answers.delete(answers.keys().next().value as string);
      };
      lookup.then(
        (records) => remember({ records }),
        (error: unknown) => {
          if (DEFINITE.has((error as NodeJS.ErrnoException)?.code ?? '')) remember({ error });
          else pending.delete(key);
        },
      );
    }
    return lookup;
  };
}
