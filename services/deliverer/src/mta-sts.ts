/**
 * MTA-STS (RFC 8461) policies for the deliverer: the `_mta-sts.<domain>` TXT lookup, the HTTPS
 * fetch of https://mta-sts.<domain>/.well-known/mta-sts.txt, and the cache in the store (so a
 * policy outlives restarts until its max_age). The decisions are rules/mta-sts.ts.
 *
 * mailauth has an MTA-STS module, but its fetch always dials port 443 and trusts only the runtime's
 * default CAs, so it cannot be pointed at a test server; the fetch here is the same few steps with
 * those two as options.
 */
import { Buffer } from 'node:buffer';
import { request } from 'node:https';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import type { MxResolver } from './mx.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import { parseStsPolicy, parseStsRecord, policyExpiresAt, stsStep, type StsPolicy, type StsRecord } from '@backupmx/shared/rules/mta-sts.ts';

/** The lookups MTA-STS needs: TXT, and the policy host's addresses (node:dns/promises' Resolver has them). */
export type StsResolver = Pick<MxResolver, 'resolve4' | 'resolve6'> & { resolveTxt(hostname: string): Promise<string[][]> };

export interface MtaStsOptions {
  resolver: StsResolver;
  store: Store;
  log: Logger;
  /** Port of the policy host (443; tests use their own server's). */
  port?: number;
  /** CAs the policy host's certificate must chain to; default: the runtime's (tests give their own). */
  ca?: string[];
  /** Time limit of one fetch, from connect to the last byte. */
  timeoutMs?: number;
}

/** RFC 8461 3.3: a policy larger than this is not read. */
const MAX_POLICY_BYTES = 64 * 1024;
/** After a failed fetch, the same policy id is not fetched again for this long (each attempt would wait for it). */
const RETRY_FETCH_MS = 5 * 60_000;

const cacheKey = (domain: string) => `mta-sts:${domain}`;

function codeOf(error: unknown): string {
  return String((error as { code?: unknown }).code ?? (error as Error).message);
}

/** A policy in force for a delivery, with how it was obtained (for logs). */
export interface AppliedPolicy {
  policy: StsPolicy;
  /** Set when a fetch failed and the cached policy stood in. */
  fetchError?: string;
}

export function createMtaSts(options: MtaStsOptions) {
  const { resolver, store, log } = options;
  const port = options.port ?? 443;
  const timeoutMs = options.timeoutMs ?? 15_000;
  const inFlight = new Map<string, Promise<StsPolicy | { error: string }>>();
  const failedUntil = new Map<string, number>();

  async function lookup(domain: string): Promise<StsRecord | { dnsError: string }> {
    try {
      return parseStsRecord(await resolver.resolveTxt(`_mta-sts.${domain}`));
    } catch (error) {
      const code = codeOf(error);
      return ['ENODATA', 'ENOTFOUND', 'NOTFOUND'].includes(code) ? { none: `no TXT record (${code})` } : { dnsError: code };
    }
  }

  async function readCached(domain: string, now: number): Promise<StsPolicy | null> {
    try {
      const text = await store.cacheGet(cacheKey(domain), now);
      if (text === null) return null;
      const policy = JSON.parse(text) as Partial<StsPolicy>;
      const whole = typeof policy.id === 'string' && typeof policy.mode === 'string' && Array.isArray(policy.mx) && typeof policy.maxAge === 'number' && typeof policy.fetchedAt === 'number';
      if (!whole) throw new Error('not a policy');
      return policy as StsPolicy;
    } catch (error) {
      log.warn({ err: error, domain }, 'MTA-STS: cached policy unreadable');
      return null;
    }
  }

  /** GET the policy file over HTTPS: the host's certificate must chain to the CAs and name mta-sts.<domain>; no redirects. */
  async function download(domain: string): Promise<string> {
    const host = `mta-sts.${domain}`;
    const [v4, v6] = await Promise.allSettled([resolver.resolve4(host), resolver.resolve6(host)]);
    const address = [...(v4.status === 'fulfilled' ? v4.value : []), ...(v6.status === 'fulfilled' ? v6.value : [])][0];
    if (address === undefined) throw new Error(`${host} has no address`);
    return new Promise((resolve, reject) => {
      let size = 0;
      const chunks: Buffer[] = [];
      const req = request(
        {
          host: address,
          port,
          path: '/.well-known/mta-sts.txt',
          method: 'GET',
          // The connection goes to the address; TLS and HTTP name the policy host.
          servername: host,
          headers: { host },
          rejectUnauthorized: true,
          ...(options.ca ? { ca: options.ca } : {}),
          agent: false,
          timeout: timeoutMs,
        },
        (res) => {
          if (res.statusCode !== 200) {
            res.resume();
            return reject(new Error(`https://${host}/.well-known/mta-sts.txt answered HTTP ${res.statusCode} (only 200 counts; redirects are not followed)`));
          }
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_POLICY_BYTES) {
              req.destroy(new Error(`policy larger than ${MAX_POLICY_BYTES} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
          res.on('error', reject);
        },
      );
      const timer = setTimeout(() => req.destroy(new Error(`no policy within ${timeoutMs} ms`)), timeoutMs);
      req.on('timeout', () => req.destroy(new Error(`no policy within ${timeoutMs} ms`)));
      req.on('error', reject);
      req.on('close', () => clearTimeout(timer));
      req.end();
    });
  }

  /** Fetch, parse and cache the policy `id` of `domain`; one fetch per domain at a time. */
  function fetchPolicy(domain: string, id: string): Promise<StsPolicy | { error: string }> {
    const key = `${domain} ${id}`;
    const running = inFlight.get(key);
    if (running) return running;
    if ((failedUntil.get(key) ?? 0) > Date.now()) return Promise.resolve({ error: 'the last fetch of this policy failed; not tried again yet' });
    const fetching = (async () => {
      let result: StsPolicy | { error: string };
      try {
        result = parseStsPolicy(await download(domain), id, Date.now());
      } catch (error) {
        result = { error: (error as Error).message || codeOf(error) };
      }
      if ('error' in result) {
        failedUntil.set(key, Date.now() + RETRY_FETCH_MS);
        log.warn({ domain, id, error: result.error }, 'MTA-STS: policy fetch failed');
        return result;
      }
      failedUntil.delete(key);
      try {
        await store.cachePut(cacheKey(domain), JSON.stringify(result), policyExpiresAt(result));
      } catch (error) {
        log.warn({ err: error, domain }, 'MTA-STS: policy could not be cached');
      }
      log.info({ domain, id, mode: result.mode, mx: result.mx, maxAge: result.maxAge }, 'MTA-STS: policy fetched');
      return result;
    })().finally(() => inFlight.delete(key));
    inFlight.set(key, fetching);
    return fetching;
  }

  return {
    /** The policy that applies to mail for `domain` now, or null (no policy, or mode none). */
    async policyFor(domain: string): Promise<AppliedPolicy | null> {
      const now = Date.now();
      const [record, cached] = await Promise.all([lookup(domain), readCached(domain, now)]);
      const step = stsStep(record, cached, now);
      let applied: AppliedPolicy | null = null;
      if ((step === 'cached' || step === 'refresh') && cached) {
        applied = { policy: cached };
        if (step === 'refresh' && 'id' in record) void fetchPolicy(domain, record.id);
      } else if (step === 'fetch' && 'id' in record) {
        const fetched = await fetchPolicy(domain, record.id);
        // RFC 8461 5.1: a failed fetch leaves an unexpired cached policy in force.
        if (!('error' in fetched)) applied = { policy: fetched };
        else if (cached && policyExpiresAt(cached) > now) applied = { policy: cached, fetchError: fetched.error };
      }
      return applied && applied.policy.mode !== 'none' ? applied : null;
    },
  };
}

export type MtaSts = ReturnType<typeof createMtaSts>;
