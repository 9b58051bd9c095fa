import type { Target } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import type { CalloutResult } from './callout.ts';
import type { RouteState } from './primary-state.ts';

export type WhenDown = 'accept' | 'defer';

export interface VerifierDeps {
  store: Pick<Store, 'cacheGet' | 'cachePut'>;
  callout(targets: readonly Target[], address: string): Promise<CalloutResult>;
  /** The health service's view of a route. */
  routeState(route: string): RouteState;
  now(): number;
  log: Logger;
  positiveTtlMs: number;
  negativeTtlMs: number;
  /** After a callout could not reach a route, skip callouts to it for this long (or until it is seen up). */
  backoffMs: number;
}

export const unknownUser = (address: string): SmtpReply => ({ code: 550, status: '5.1.1', text: `<${address}>: Recipient address rejected: User unknown` });
export const cannotVerify = (address: string): SmtpReply => ({
  code: 450,
  status: '4.2.0',
  text: `<${address}>: Recipient address rejected: the primary mail server cannot verify it now, try again later`,
});

/** The cache key of a recipient: lower-cased (primaries compare local parts case-insensitively in practice). */
export const cacheKey = (address: string) => `verify:${address.toLowerCase()}`;

/**
 * Recipient verification with a persistent cache: positive answers kept `positiveTtlMs` (30 days),
 * negative ones `negativeTtlMs` (1 hour). A cached answer is used whether the primary is up or not
 * (so known recipients keep working through an outage, the point of a backup MX). Without one, the
 * primary is asked; when it is down (by the health service, or it does not answer in time), the
 * domain's policy decides: accept, or 450 4.2.0 so the sender retries.
 */
export function createVerifier(deps: VerifierDeps) {
  const inFlight = new Map<string, Promise<CalloutResult>>();
  const unreachableSince = new Map<string, number>();

  function policy(address: string, whenDown: WhenDown, why: string): SmtpReply | null {
    deps.log.info({ to: address, policy: whenDown, why }, 'recipient not verified: primary unavailable');
    return whenDown === 'defer' ? cannotVerify(address) : null;
  }

  return {
    /** Null to accept, else the refusal. */
    async verify(address: string, route: string, targets: readonly Target[], whenDown: WhenDown): Promise<SmtpReply | null> {
      const key = cacheKey(address);
      let cached: string | null = null;
      try {
        cached = await deps.store.cacheGet(key, deps.now());
      } catch (error) {
        deps.log.warn({ err: error }, 'verification cache unavailable');
      }
      if (cached === 'valid') return null;
      if (cached === 'invalid') return unknownUser(address);

      const state = deps.routeState(route);
      if (state === 'up') unreachableSince.delete(route);
      if (state === 'down') return policy(address, whenDown, 'the health service reports the primary down');
      const failedAt = unreachableSince.get(route);
      if (failedAt !== undefined && deps.now() - failedAt < deps.backoffMs) return policy(address, whenDown, 'the primary did not answer a recent callout');

      let pending = inFlight.get(key);
      if (!pending) {
        pending = deps.callout(targets, address).finally(() => inFlight.delete(key));
        inFlight.set(key, pending);
      }
      const result = await pending;
      if (result.unreachable) {
        unreachableSince.set(route, deps.now());
        return policy(address, whenDown, result.reply);
      }
      unreachableSince.delete(route);
      if (result.verdict === 'unknown') return policy(address, whenDown, result.reply);
      const valid = result.verdict === 'valid';
      try {
        await deps.store.cachePut(key, valid ? 'valid' : 'invalid', deps.now() + (valid ? deps.positiveTtlMs : deps.negativeTtlMs));
      } catch (error) {
        deps.log.warn({ err: error }, 'cannot write the verification cache');
      }
      deps.log.info({ to: address, verdict: result.verdict, primary: result.target, reply: result.reply }, 'recipient verified with the primary');
      return valid ? null : unknownUser(address);
    },
  };
}

export type Verifier = ReturnType<typeof createVerifier>;
