/**
 * MTA-STS (RFC 8461), the pure part: the `_mta-sts` TXT record, the policy file, MX host matching,
 * and when a cached policy is used, fetched again, or refreshed. The lookups, the HTTPS fetch and
 * the cache in the store are the deliverer's (services/deliverer/src/mta-sts.ts).
 */
import { tlsRefusal, type TlsFacts, type TlsRequirement } from './next-hop-tls.ts';

export type StsMode = 'enforce' | 'testing' | 'none';

export interface StsPolicy {
  /** The TXT record's id this policy was fetched under. */
  id: string;
  mode: StsMode;
  /** MX host patterns, lower case: `mx.example.com` or `*.example.com`. */
  mx: string[];
  /** Seconds (at most 31557600, a year). */
  maxAge: number;
  /** Epoch ms of the fetch. */
  fetchedAt: number;
}

/** RFC 8461 3.2: max_age is at most a year. */
export const MAX_AGE_LIMIT = 31_557_600;

export type StsRecord = { id: string } | { none: string };

const EXT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const EXT_VALUE = /^[\x21-\x3a\x3c\x3e-\x7e]+$/;

/**
 * The policy id from the TXT records of `_mta-sts.<domain>` (each record as its strings), or why
 * there is none (RFC 8461 3.1): records not starting with `v=STSv1;` are ignored; anything but
 * exactly one left, or one that is not `v=STSv1; id=<1-32 letters or digits>[; ext=value]...`,
 * means no policy.
 */
export function parseStsRecord(records: readonly (readonly string[])[]): StsRecord {
  const candidates = records.map((strings) => strings.join('')).filter((text) => /^v=STSv1[ \t]*;/.test(text));
  if (candidates.length === 0) return { none: 'no v=STSv1 TXT record' };
  if (candidates.length > 1) return { none: `${candidates.length} v=STSv1 TXT records (exactly one is allowed)` };
  const [, ...fields] = (candidates[0] ?? '').split(';').map((field) => field.replace(/^[ \t]+|[ \t]+$/g, ''));
  if (fields.at(-1) === '') fields.pop();
  let id: string | null = null;
  for (const field of fields) {
    const equals = field.indexOf('=');
    const name = field.slice(0, equals);
    const value = field.slice(equals + 1);
    if (equals < 1) return { none: `malformed TXT record field ${JSON.stringify(field)}` };
    if (name === 'id' && id === null) {
      if (!/^[A-Za-z0-9]{1,32}$/.test(value)) return { none: `malformed id ${JSON.stringify(value)}` };
      id = value;
    } else if (!EXT_NAME.test(name) || !EXT_VALUE.test(value)) return { none: `malformed TXT record field ${JSON.stringify(field)}` };
  }
  return id === null ? { none: 'TXT record without id' } : { id };
}

const MX_PATTERN = /^(?:\*\.)?[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$/;

/**
 * A policy file (RFC 8461 3.2): `key: value` lines (LF or CRLF); version STSv1, mode, max_age and,
 * unless the mode is none, at least one mx. Field names and values are case-sensitive; of a field
 * given twice (other than mx) the first counts; unknown fields are ignored.
 */
export function parseStsPolicy(text: string, id: string, fetchedAt: number): StsPolicy | { error: string } {
  const fields = new Map<string, string>();
  const mx: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const colon = line.indexOf(':');
    if (colon < 1) continue;
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (name === 'mx') {
      const pattern = value.toLowerCase().replace(/\.$/, '');
      if (!MX_PATTERN.test(pattern)) return { error: `invalid mx pattern ${JSON.stringify(value)}` };
      if (!mx.includes(pattern)) mx.push(pattern);
    } else if (!fields.has(name)) fields.set(name, value);
  }
  if (fields.get('version') !== 'STSv1') return { error: `version is ${JSON.stringify(fields.get('version') ?? null)}, not STSv1` };
  const mode = fields.get('mode');
  if (mode !== 'enforce' && mode !== 'testing' && mode !== 'none') return { error: `mode is ${JSON.stringify(mode ?? null)}, not enforce, testing or none` };
  const maxAge = fields.get('max_age') ?? '';
  if (!/^[0-9]{1,10}$/.test(maxAge) || Number(maxAge) > MAX_AGE_LIMIT) return { error: `max_age is ${JSON.stringify(fields.get('max_age') ?? null)}, not a number of seconds up to ${MAX_AGE_LIMIT}` };
  if (mode !== 'none' && mx.length === 0) return { error: 'no mx' };
  return { id, mode, mx, maxAge: Number(maxAge), fetchedAt };
}

/**
 * An MX host matches a pattern (RFC 8461 4.1): the same name (case-insensitive, trailing dot
 * ignored), or `*.` plus a name that the host extends by exactly one label on the left.
 */
export function mxMatches(host: string, pattern: string): boolean {
  const name = host.toLowerCase().replace(/\.$/, '');
  const wanted = pattern.toLowerCase().replace(/\.$/, '');
  if (!wanted.startsWith('*.')) return name === wanted;
  const suffix = wanted.slice(1);
  const label = name.slice(0, -suffix.length);
  return name.endsWith(suffix) && label.length > 0 && !label.includes('.');
}

export const policyNames = (policy: StsPolicy, host: string): boolean => policy.mx.some((pattern) => mxMatches(host, pattern));

export const policyExpiresAt = (policy: StsPolicy): number => policy.fetchedAt + policy.maxAge * 1000;

/**
 * What to do for a delivery, from the TXT lookup (a record, none, or a DNS failure) and the cached
 * policy (RFC 8461 3.3, 5.1):
 * - `cached`: apply the cached policy (same id; or no record / DNS failure while it is unexpired);
 * - `refresh`: apply the cached policy and fetch it again in the background (same id, older than
 *   half its max_age or a day), so a policy in use never expires for want of a fetch;
 * - `fetch`: fetch it now (new id, or nothing usable cached); if that fails the cached policy,
 *   when unexpired, still applies;
 * - `none`: no policy: deliver as before.
 */
export function stsStep(record: StsRecord | { dnsError: string }, cached: StsPolicy | null, now: number): 'cached' | 'refresh' | 'fetch' | 'none' {
  const live = cached !== null && policyExpiresAt(cached) > now ? cached : null;
  if (!('id' in record)) return live ? 'cached' : 'none';
  if (!live || live.id !== record.id) return 'fetch';
  const age = now - live.fetchedAt;
  return age > Math.min((live.maxAge * 1000) / 2, 86_400_000) ? 'refresh' : 'cached';
}

/**
 * The MX hosts (in their order) a delivery under `policy` may use: in enforce mode those the policy
 * names, and the others as `skipped`; none named: the deferral (RFC 8461 5.2: never a bounce, the
 * policy may be updated meanwhile). In testing mode all of them.
 */
export function stsHops<T extends { name: string }>(policy: StsPolicy, domain: string, hops: readonly T[]): { hops: T[]; skipped: string[] } | { defer: string } {
  if (policy.mode !== 'enforce') return { hops: [...hops], skipped: [] };
  const named = hops.filter((hop) => policyNames(policy, hop.name));
  const skipped = [...new Set(hops.filter((hop) => !named.includes(hop)).map((hop) => hop.name))];
  if (named.length === 0) return { defer: `4.7.5 MTA-STS policy of ${domain} (id ${policy.id}, mode enforce) names none of its MX hosts (${skipped.join(', ')}); the mail waits` };
  return { hops: named, skipped };
}

/**
 * Under a policy in testing mode, what enforce mode would have refused of a delivery to MX host
 * `host` (`hop` names it with its address) whose TLS showed `facts`: an MX host outside the
 * policy, or TLS short of `requirement` (verified for the host name); null: nothing.
 */
export function stsTestingRefusal(policy: StsPolicy, host: string, hop: string, facts: TlsFacts | null, requirement: TlsRequirement): string | null {
  if (policy.mode !== 'testing') return null;
  if (!policyNames(policy, host)) return `MX host ${host} is not in the policy (mx: ${policy.mx.join(', ')})`;
  return facts ? tlsRefusal(requirement, facts, hop) : null;
}
