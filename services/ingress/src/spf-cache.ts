/**
 * SPF verdicts remembered for a few seconds. An SPF check is a function of the client address, the
 * HELO name, the envelope sender and DNS (RFC 7208 4.1): a burst of mail from one sender over one
 * client asks it again and again (the bench: every message), and mailauth spends about half of its
 * time per message there (parsing the address, the policy, an Error copied per failed lookup),
 * although the DNS answers themselves are cached (dns.ts). Verdicts from a temporary error are not
 * remembered.
 *
 * mailauth's authenticate() takes the SPF function from its module `mailauth/lib/spf` when it is
 * loaded, so this module replaces that export first; it must be imported before 'mailauth'
 * (sender-auth.ts does). The replacement is the original unless authenticate's options carry a
 * cache under SPF_CACHE_OPTION (only evaluateSender's do, when given one).
 */
import { createRequire } from 'node:module';
import type { SPFOptions, SPFResult } from 'mailauth';

type Spf = (opts: SPFOptions) => Promise<SPFResult>;

export interface SpfCache {
  /** The verdict for these options: remembered, or from `spf` (and then remembered). */
  verdict(opts: SPFOptions, spf: Spf): Promise<SPFResult>;
}

/** The key of authenticate's options that names the cache (mailauth passes its options on to spf()). */
export const SPF_CACHE_OPTION = 'backupmxSpfCache';

/** What an SPF verdict depends on, besides DNS (and the resolver, which has a cache of its own). */
function keyOf(opts: SPFOptions): string {
  return JSON.stringify([opts.ip, opts.helo ?? null, opts.sender ?? null, opts.mta ?? null, opts.maxResolveCount ?? null, opts.maxVoidCount ?? null, Boolean((opts as { strict?: boolean }).strict)]);
}

/** At most `maxEntries` verdicts, each for `ttlMs`, shared by concurrent checks of the same question. */
export function createSpfCache(options: { ttlMs: number; maxEntries: number; now?: () => number }): SpfCache {
  const now = options.now ?? Date.now;
  const verdicts = new Map<string, { expires: number; result: Promise<SPFResult> }>();
  return {
    verdict(opts, spf) {
      const key = keyOf(opts);
      const known = verdicts.get(key);
      if (known && known.expires > now()) return known.result;
      verdicts.delete(key);
      const result = spf(opts);
      const forget = () => {
        if (verdicts.get(key)?.result === result) verdicts.delete(key);
      };
      verdicts.set(key, { expires: now() + options.ttlMs, result });
      if (verdicts.size > options.maxEntries) verdicts.delete(verdicts.keys().next().value as string);
      result.then((verdict) => {
        if (verdict.status.result === 'temperror') forget();
      }, forget);
      return result;
    },
  };
}

const spfModule = createRequire(import.meta.url)('mailauth/lib/spf') as { spf: Spf };
const original = spfModule.spf;
spfModule.spf = (opts) => {
  const cache = (opts as unknown as Record<string, SpfCache | undefined>)[SPF_CACHE_OPTION];
  return cache ? cache.verdict(opts, original) : original(opts);
};
