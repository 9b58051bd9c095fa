import { isIPv4, isIPv6 } from 'node:net';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';
import type { Resolver } from './dns.ts';
import { expandIPv6 } from '../../../shared/src/rules/ip.ts';

/** The DNSBL query name of an address in a zone: reversed octets (IPv4) or nibbles (IPv6). */
export function dnsblQuery(address: string, zone: string): string | null {
  const plain = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
  if (isIPv4(plain)) return `${plain.split('.').reverse().join('.')}.${zone}`;
  if (!isIPv6(plain)) return null;
  const hex = expandIPv6(plain).join('');
  return `${[...hex].reverse().join('.')}.${zone}`;
}

/**
 * A listing: an A record in 127.0.0.0/8. Spamhaus's 127.255.255.x answers mean "query refused"
 * (public resolver, over quota), not "listed", and anything outside 127/8 is a wildcard or an
 * NXDOMAIN-rewriting resolver: neither counts.
 */
export function isListing(record: unknown): boolean {
  return typeof record === 'string' && /^127\.\d+\.\d+\.\d+$/.test(record) && !record.startsWith('127.255.255.');
}

/**
 * Look the client up in every zone at once. Resolves to the first zone that lists it, or null;
 * DNS failures count as "not listed" (a blocklist outage must not stop mail).
 */
export async function findListing(address: string, zones: readonly string[], resolve: Resolver): Promise<string | null> {
  const hits = await Promise.all(
    zones.map(async (zone) => {
      const name = dnsblQuery(address, zone);
      if (!name) return null;
      try {
        return (await resolve(name, 'A')).some(isListing) ? zone : null;
      } catch {
        return null;
      }
    }),
  );
  return hits.find((zone) => zone !== null) ?? null;
}

export function dnsblReply(address: string, zone: string): SmtpReply {
  return { code: 554, status: '5.7.1', text: `Service unavailable; Client host [${address}] blocked using ${zone}` };
}
