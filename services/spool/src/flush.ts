import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import { routeForRecipient } from '@backupmx/shared/rules/routing.ts';

/**
 * Ask every deliverer to deliver what is queued for one domain's route (or every route) now,
 * ignoring backoff. Returns the route flushed ('all'), or a refusal: the domain is not one we back
 * up (400), or the broker is not connected (503).
 */
export function flushDomain(config: Pick<Config, 'RELAY_DOMAINS' | 'PRIMARY' | 'domains'>, broker: Broker, domain: string | undefined): { route: string } | { status: 400 | 503; error: string } {
  let route: string | undefined;
  if (domain !== undefined) {
    const name = domain.trim().toLowerCase().replace(/\.$/, '');
    if (!config.RELAY_DOMAINS.includes(name)) return { status: 400, error: `domain: ${name} is not one of RELAY_DOMAINS` };
    route = routeForRecipient(`postmaster@${name}`, config);
  }
  if (!broker.connected()) return { status: 503, error: 'the message broker is not connected; nothing was flushed' };
  broker.publishEvent('queue.flush', route === undefined ? {} : { route });
  return { route: route ?? 'all' };
}
