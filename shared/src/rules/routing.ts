import { splitAddress } from './address.ts';
import { formatTarget, parseTarget, type Target } from './target.ts';

/**
 * A route is where the deliveries of a domain are queued and claimed:
 * - `host:port[,host:port...]`: an ordered list of next-hop targets (PRIMARY, a domain's own
 *   PRIMARY, or SMARTHOST), written canonically;
 * - `mx:<domain>`: the domain's DNS MX hosts, looked up by the deliverer at each attempt
 *   (PRIMARY=mx, and mail to other domains, such as delivery reports, without SMARTHOST).
 */
export interface RoutingConfig {
  PRIMARY: readonly string[];
  domains: Readonly<Record<string, { PRIMARY?: readonly string[] | undefined }>>;
  RELAY_DOMAINS?: readonly string[] | undefined;
  SMARTHOST?: string | undefined;
}

const MX_PREFIX = 'mx:';

export function routeOf(targets: readonly string[]): string {
  return targets.map((text) => formatTarget(parseTarget(text) ?? { host: text, port: 25 })).join(',');
}

/** The targets of a host list route; none for an `mx:` route. */
export function routeTargets(route: string): Target[] {
  if (mxDomainOf(route) !== null) return [];
  return route.split(',').flatMap((text) => parseTarget(text) ?? []);
}

/** A PRIMARY list that means "deliver by DNS MX". */
export function isMxList(targets: readonly string[]): boolean {
  return targets.length === 1 && targets[0]?.toLowerCase() === 'mx';
}

export function mxRoute(domain: string): string {
  return `${MX_PREFIX}${domain}`;
}

/** The domain of an `mx:` route, or null for a host list. */
export function mxDomainOf(route: string): string | null {
  return route.startsWith(MX_PREFIX) ? route.slice(MX_PREFIX.length) : null;
}

/** Without RELAY_DOMAINS in the given config every domain counts as ours (the primary's). */
function isRelayDomain(domain: string, config: RoutingConfig): boolean {
  return config.RELAY_DOMAINS === undefined || config.RELAY_DOMAINS.includes(domain) || config.domains[domain] !== undefined;
}

/**
 * The route of one recipient. A domain we back up goes to its own PRIMARY (config file) or PRIMARY,
 * `mx` meaning its DNS MX; any other domain (delivery reports to senders) goes to SMARTHOST when set,
 * else to its DNS MX.
 */
export function routeForRecipient(recipient: string, config: RoutingConfig): string {
  const domain = splitAddress(recipient)?.domain;
  if (domain === undefined || isRelayDomain(domain, config)) {
    const targets = (domain === undefined ? undefined : config.domains[domain]?.PRIMARY) ?? config.PRIMARY;
    return isMxList(targets) ? mxRoute(domain ?? '') : routeOf(targets);
  }
  return config.SMARTHOST ? routeOf([config.SMARTHOST]) : mxRoute(domain);
}

/**
 * The primaries' routes: each relay domain's (its own PRIMARY, PRIMARY, or `mx:<domain>`). Not
 * SMARTHOST's: it is no primary (the deliverer learns its route from the queue like any other).
 */
export function configuredRoutes(config: RoutingConfig): string[] {
  const routes = new Set<string>();
  for (const domain of new Set([...(config.RELAY_DOMAINS ?? []), ...Object.keys(config.domains)])) {
    routes.add(routeForRecipient(`postmaster@${domain}`, config));
  }
  if (!isMxList(config.PRIMARY)) routes.add(routeOf(config.PRIMARY));
  return [...routes];
}

/**
 * Every distinct target of every configured host-list route (what the health service probes).
 * `mx:` routes are not probed: their hosts come from DNS at each attempt, and retries decide.
 */
export function configuredTargets(config: RoutingConfig): string[] {
  return [...new Set(configuredRoutes(config).flatMap((route) => routeTargets(route).map(formatTarget)))];
}
