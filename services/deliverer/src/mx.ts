/**
 * Next hops of a domain by DNS MX, as RFC 5321 5.1 has a relay do it: MX records by preference,
 * equal preferences in random order; every record at our own preference or worse dropped (we are
 * an MX of the domains we back up: delivering to ourselves or to a worse MX would loop); no MX
 * records: the domain's own address (implicit MX). Temporary DNS failures and "nothing better than
 * us" defer (4.4.3 / 4.4.4): a backup MX never bounces because DNS is unhelpful for a while.
 */
import { isIP } from 'node:net';
import { networkInterfaces } from 'node:os';
import { normalizeDomain } from '@backupmx/shared/rules/address.ts';

/** The part of node:dns/promises' Resolver we use (injectable: tests need no internet). */
export interface MxResolver {
  resolveMx(hostname: string): Promise<{ exchange: string; priority: number }[]>;
  resolve4(hostname: string): Promise<string[]>;
  resolve6(hostname: string): Promise<string[]>;
}

/** One address to try: `name` is the MX host (for logs, Remote-MTA and TLS SNI). */
export interface MxHop {
  host: string;
  port: number;
  name: string;
}

export type MxPlan = { hops: MxHop[] } | { defer: string } | { fail: string };

export interface Self {
  /** Our names, lower case, no trailing dot: SMTP_HOSTNAME and the names in SELF_NAMES. */
  names: ReadonlySet<string>;
  /** Our addresses: the host's interfaces and the addresses in SELF_NAMES. */
  addresses: ReadonlySet<string>;
}

/** Addresses tried for one delivery at most (Postfix smtp_mx_address_limit is 5); at least two. */
export const MAX_ADDRESSES = 5;

/** Error codes of node's resolver that mean "this name has no such records / does not exist". */
const NO_DATA = new Set(['ENODATA', 'ENOTFOUND', 'NOTFOUND', 'ENONAME']);

function code(error: unknown): string {
  return String((error as { code?: unknown }).code ?? (error as Error).message);
}

/** Who we are, for dropping our own MX records: SMTP_HOSTNAME, SELF_NAMES, interface addresses. */
export function selfFrom(hostname: string, selfNames: readonly string[], interfaceAddresses?: readonly string[]): Self {
  const names = new Set<string>([normalizeDomain(hostname)]);
  const addresses = new Set<string>();
  for (const entry of selfNames) {
    const plain = entry.replace(/^\[|\]$/g, '');
    if (isIP(plain)) addresses.add(plain.toLowerCase());
    else names.add(normalizeDomain(entry));
  }
  const local = interfaceAddresses ?? Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((entry) => entry.address));
  for (const address of local) addresses.add(address.toLowerCase());
  return { names, addresses };
}

/** Shuffle in place (Fisher-Yates) with the given source of randomness. */
function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j] as T, items[i] as T];
  }
  return items;
}

/**
 * Pure: MX records in the order to try them, without ours and worse. `ourPreference` is the best
 * preference at which one of our names appears (null: we are not listed).
 */
export function orderMx(records: readonly { exchange: string; priority: number }[], self: Pick<Self, 'names'>, random: () => number = Math.random) {
  const normalized = records.map((record) => ({ exchange: normalizeDomain(record.exchange), priority: record.priority }));
  const ours = normalized.filter((record) => self.names.has(record.exchange)).map((record) => record.priority);
  const ourPreference = ours.length ? Math.min(...ours) : null;
  const better = normalized.filter((record) => ourPreference === null || record.priority < ourPreference);
  const groups = new Map<number, typeof better>();
  for (const record of better) groups.set(record.priority, [...(groups.get(record.priority) ?? []), record]);
  const ordered = [...groups.keys()].sort((a, b) => a - b).flatMap((priority) => shuffle([...(groups.get(priority) ?? [])], random));
  return { ordered, ourPreference };
}

/** The addresses of one host name; `temporary` when DNS failed for now. */
async function addressesOf(name: string, resolver: MxResolver): Promise<{ addresses: string[]; temporary: boolean }> {
  if (isIP(name.replace(/^\[|\]$/g, ''))) return { addresses: [name.replace(/^\[|\]$/g, '')], temporary: false };
  const results = await Promise.allSettled([resolver.resolve4(name), resolver.resolve6(name)]);
  const addresses = results.flatMap((result) => (result.status === 'fulfilled' ? result.value : []));
  const temporary = results.some((result) => result.status === 'rejected' && !NO_DATA.has(code(result.reason)));
  return { addresses, temporary };
}

/** The next hops for mail to `domain`, or why not now. */
export async function planMx(domain: string, options: { resolver: MxResolver; self: Self; port: number; random?: () => number; maxAddresses?: number }): Promise<MxPlan> {
  const { resolver, self, port } = options;
  const limit = Math.max(2, options.maxAddresses ?? MAX_ADDRESSES);
  if (domain === '') return { defer: '4.4.4 No domain to look up MX records for' };
  let records: { exchange: string; priority: number }[];
  try {
    records = await resolver.resolveMx(domain);
  } catch (error) {
    const reason = code(error);
    if (reason === 'ENODATA') records = [];
    else if (NO_DATA.has(reason)) return { defer: `4.4.4 Domain ${domain} not found in DNS (${reason}); will try again` };
    else return { defer: `4.4.3 Temporary DNS failure looking up MX records of ${domain} (${reason})` };
  }
  // RFC 7505: a single MX "." says the domain accepts no mail at all.
  if (records.length === 1 && normalizeDomain(records[0]?.exchange ?? '') === '') {
    return { fail: `556 5.1.10 Domain ${domain} accepts no mail (null MX, RFC 7505)` };
  }
  // RFC 5321 5.1: no MX records: the domain itself is the only MX, at preference 0.
  const implicit = records.length === 0;
  const { ordered, ourPreference } = orderMx(implicit ? [{ exchange: domain, priority: 0 }] : records, self, options.random);
  let cutoff = ourPreference ?? Number.POSITIVE_INFINITY;
  let candidates: { hop: MxHop; priority: number }[] = [];
  let temporary = false;
  for (const record of ordered) {
    if (record.priority >= cutoff) break;
    const found = await addressesOf(record.exchange, resolver);
    temporary ||= found.temporary;
    if (found.addresses.some((address) => self.addresses.has(address.toLowerCase()))) {
      // The host resolves to us: our preference is this one; drop it and everything as bad or worse.
      cutoff = record.priority;
      candidates = candidates.filter((candidate) => candidate.priority < cutoff);
      break;
    }
    for (const address of found.addresses) candidates.push({ hop: { host: address, port, name: record.exchange }, priority: record.priority });
  }
  const hops = candidates.slice(0, limit).map((candidate) => candidate.hop);
  if (hops.length) return { hops };
  if (temporary) return { defer: `4.4.3 Temporary DNS failure looking up the mail hosts of ${domain}` };
  if (cutoff !== Number.POSITIVE_INFINITY && !ordered.some((record) => record.priority < cutoff)) {
    return { defer: `4.4.4 No usable MX for ${domain}: this host is its best MX (preference ${cutoff}); the mail waits for a better one` };
  }
  return { defer: `4.4.4 No usable MX for ${domain}: ${implicit ? 'the domain has no address' : 'no better mail host has an address'}` };
}
