import type { PrimaryEvent } from '@backupmx/shared/broker/broker.ts';

export type RouteState = 'up' | 'down' | 'unknown';

/**
 * What ingress knows of the primaries, from the health service's events (primary.up, primary.down,
 * primary.status). News older than `staleAfterMs` counts as unknown: if the health service stops,
 * policies that depend on the primary fall back to their safe side.
 */
export function createPrimaryState(staleAfterMs: number) {
  const targets = new Map<string, { state: PrimaryEvent['state']; at: number }>();

  function targetState(target: string, now: number): RouteState {
    const known = targets.get(target);
    if (!known || now - known.at > staleAfterMs) return 'unknown';
    return known.state;
  }

  return {
    update(event: PrimaryEvent, now: number): void {
      if (typeof event?.target !== 'string' || !['up', 'down', 'unknown'].includes(event.state)) return;
      targets.set(event.target, { state: event.state, at: now });
    },
    /** A route (`host:port[,host:port...]`) is up when any target is, down when every one is. */
    route(route: string, now: number): RouteState {
      const states = route.split(',').map((target) => targetState(target, now));
      if (states.includes('up')) return 'up';
      return states.length > 0 && states.every((state) => state === 'down') ? 'down' : 'unknown';
    },
    /** Every one of these routes is up. */
    allUp(routes: readonly string[], now: number): boolean {
      return routes.length > 0 && routes.every((route) => this.route(route, now) === 'up');
    },
  };
}

export type PrimaryState = ReturnType<typeof createPrimaryState>;
