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
