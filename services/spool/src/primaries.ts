import type { Broker, PrimaryEvent } from '@backupmx/shared/broker/broker.ts';
import type { TlsStatus } from '@backupmx/shared/rules/next-hop-tls.ts';

export interface PrimaryState {
  state: PrimaryEvent['state'];
  /** Epoch ms of the health service's last transition of this target. */
  since: number;
  lastError: string | null;
  latencyMs: number | null;
  /** STARTTLS offered, certificate verified, pins, as the health probe saw them (null: not known yet). */
  tls: TlsStatus | null;
  /** Epoch ms of the last event about this target we received. */
  updatedAt: number;
}

export interface Transition {
  target: string;
  from: PrimaryEvent['state'];
  to: PrimaryEvent['state'];
  at: number;
  lastError: string | null;
}

/**
 * Fold one health event into the known states. A transition is a change of state, so the same
 * news from several health instances (or primary.status after primary.down) counts once.
 */
export function applyPrimaryEvent(states: Map<string, PrimaryState>, event: PrimaryEvent, now: number): Transition | null {
  const previous = states.get(event.target);
  // The TLS facts of the last probe that got that far stay until a newer probe brings others.
  const tls = event.tls !== undefined ? event.tls : (previous?.tls ?? null);
  states.set(event.target, { state: event.state, since: event.since, lastError: event.lastError ?? null, latencyMs: event.latencyMs ?? null, tls, updatedAt: now });
  const from = previous?.state ?? 'unknown';
  if (from === event.state || event.state === 'unknown') return null;
  return { target: event.target, from, to: event.state, at: now, lastError: event.lastError ?? null };
}

/**
 * What the spool knows of the primaries, from the health service's events: each target's state and
 * the last `keep` transitions (for GET /api/primaries and the alerts).
 */
export async function trackPrimaries(broker: Broker, onTransition: (transition: Transition, state: PrimaryState) => void, keep = 100) {
  const states = new Map<string, PrimaryState>();
  const transitions: Transition[] = [];
  await broker.subscribe(['primary.up', 'primary.down', 'primary.status'], (_key, payload) => {
    const event = payload as PrimaryEvent;
    if (typeof event?.target !== 'string' || !['up', 'down', 'unknown'].includes(event.state)) return;
    const transition = applyPrimaryEvent(states, event, Date.now());
    if (!transition) return;
    transitions.push(transition);
    if (transitions.length > keep) transitions.splice(0, transitions.length - keep);
    onTransition(transition, states.get(event.target) as PrimaryState);
  });
  return {
    states: (): Record<string, PrimaryState> => Object.fromEntries(states),
    /** Newest first. */
    transitions: (): Transition[] => [...transitions].reverse(),
  };
}

export type PrimaryTracker = Awaited<ReturnType<typeof trackPrimaries>>;
