import { splitAddress } from './address.ts';
import { formatTarget, parseTarget, type Config, type Target } from './config.ts';

/**
 * A route is the ordered list of next-hop targets for a domain, written canonically as
 * `host:port[,host:port...]`: the key under which deliveries are queued and claimed.
 */
export function routeOf(targets: readonly string[]): string {
  return targets.map((text) => formatTarget(parseTarget(text) ?? { host: text, port: 25 })).join(',');
}

export function routeTargets(route: string): Target[] {
  return route.split(',').flatMap((text) => parseTarget(text) ?? []);
}

/** The route of one recipient: its domain's own PRIMARY if the config file gives one, else PRIMARY. */
export function routeForRecipient(recipient: string, config: Pick<Config, 'PRIMARY' | 'domains'>): string {
  const domain = splitAddress(recipient)?.domain;
  const own = domain === undefined ? undefined : config.domains[domain]?.PRIMARY;
  return routeOf(own ?? config.PRIMARY);
}

/** Every route the configuration names. */
export function configuredRoutes(config: Pick<Config, 'PRIMARY' | 'domains'>): string[] {
  const routes = new Set([routeOf(config.PRIMARY)]);
  for (const settings of Object.values(config.domains)) if (settings.PRIMARY) routes.add(routeOf(settings.PRIMARY));
  return [...routes];
}

/** Every distinct target of every configured route (what the health service probes). */
export function configuredTargets(config: Pick<Config, 'PRIMARY' | 'domains'>): string[] {
  return [...new Set(configuredRoutes(config).flatMap((route) => route.split(',')))];
}
