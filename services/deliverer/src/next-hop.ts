/**
 * The addresses of a host-list route's next hops, looked up afresh for every attempt (issue 13):
 * nodemailer keeps its own five-minute DNS cache, and goes on using a cached address for five more
 * minutes when a lookup fails, so a primary whose address changed (a container started again, a
 * failover by DNS) was still dialled at its old address, which may belong to another host by then.
 * Here each attempt asks the system resolver (getaddrinfo: /etc/hosts, then DNS, whose caches honour
 * the records' TTLs), connects to the address it answers, and names host and address in the attempt
 * record (`mail.example.com[192.0.2.1]:25`); TLS still names the host (servername). A failed lookup
 * defers (4.4.3): never an old address.
 */
import { lookup as systemLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { Target } from '@backupmx/shared/runtime/config.ts';
import type { Hop } from './smtp-client.ts';

/** node:dns/promises lookup with `all: true`, injectable (tests answer from a table that changes). */
export type HostLookup = (host: string) => Promise<{ address: string; family: number }[]>;

export const defaultLookup: HostLookup = (host) => systemLookup(host, { all: true });

/** Addresses tried per target name (all of them, up to this; Postfix smtp_mx_address_limit is 5). */
const MAX_ADDRESSES = 5;

/** The hops of `targets` in order: an IP literal as it is, a name as each address it has now. */
export async function resolveTargets(targets: readonly Target[], lookup: HostLookup = defaultLookup): Promise<{ hops: Hop[] } | { defer: string }> {
  const hops: Hop[] = [];
  const failures: string[] = [];
  for (const target of targets) {
    if (isIP(target.host)) {
      hops.push({ host: target.host, port: target.port });
      continue;
    }
    try {
      const found = await lookup(target.host);
      if (found.length === 0) throw Object.assign(new Error('no address'), { code: 'ENODATA' });
      for (const { address } of found.slice(0, MAX_ADDRESSES)) hops.push({ host: address, port: target.port, name: target.host });
    } catch (error) {
      failures.push(`${target.host}: ${String((error as { code?: unknown }).code ?? (error as Error).message)}`);
    }
  }
  if (hops.length > 0) return { hops };
  return { defer: `4.4.3 Name service error for the next hop (${failures.join(', ')}); will try again` };
}
