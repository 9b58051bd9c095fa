/**
 * The MongoDB store's rules as query documents (pure, unit-tested in test/mongo-store-units.test.ts):
 * which delivery documents a claim may lease, the update that leases them, their order, and the
 * admin list filter.
 */
import type { BulkAction, ClaimOptions, ListFilter } from './store.ts';

export type Doc = Record<string, unknown>;

/**
 * A delivery that may be leased now: queued; lease free or expired; due at `now` unless the claim
 * ignores the schedule (flush) or sweeps by age (receivedBefore); for a flush, not attempted since
 * it began. The same rule as the SQLite adapter's CLAIMABLE.
 */
export function claimFilter(o: ClaimOptions): Doc {
  const and: Doc[] = [{ $or: [{ leaseUntil: null }, { leaseUntil: { $lte: o.now } }] }];
  if (o.notAttemptedSince !== undefined) {
    and.push({ $or: [{ lastAttemptAt: null }, { lastAttemptAt: { $lt: o.notAttemptedSince } }] });
  }
  const filter: Doc = { state: 'queued', $and: and };
  if (o.route !== undefined) filter['route'] = o.route;
  if (o.receivedBefore !== undefined) filter['receivedAt'] = { $lt: o.receivedBefore };
  else if (!o.ignoreSchedule) filter['nextAttemptAt'] = { $lte: o.now };
  return filter;
}

/** Lease to `owner` until now + leaseMs; `token` marks the documents this one claim call took. */
export function leaseUpdate(o: ClaimOptions, token: string): Doc {
  return { $set: { leaseOwner: o.owner, leaseUntil: o.now + o.leaseMs, leaseToken: token } };
}

/** Oldest message first; one message's routes in a stable order. */
export const CLAIM_ORDER = { receivedAt: 1, messageId: 1, route: 1 } as const;

/** Excludes the (message, route) groups this claim call has taken already. */
export function notTaken(taken: { messageId: string; route: string }[]): Doc {
  return taken.length === 0 ? {} : { $nor: taken.map(({ messageId, route }) => ({ messageId, route })) };
}

/** `text` as a case-insensitive regular expression that matches it literally, anywhere or (`end`) at the end. */
function literal(text: string, end = false): RegExp {
  return new RegExp(`${text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}${end ? '$' : ''}`, 'i');
}

/**
 * The list filter on message documents (all but `state`, which needs the deliveries): the same
 * matches as the SQLite adapter's LISTED.
 */
export function listFilter(f: ListFilter): Doc {
  const and: Doc[] = [];
  if (f.receivedBefore !== undefined) and.push({ receivedAt: { $lte: f.receivedBefore } });
  if (f.sender !== undefined) and.push({ mailFrom: f.sender === '<>' ? { $in: ['', literal(f.sender)] } : literal(f.sender) });
  if (f.domain !== undefined) and.push({ recipients: literal(`@${f.domain}`, true) });
  if (f.recipient !== undefined) and.push({ recipients: literal(f.recipient) });
  return and.length === 0 ? {} : { $and: and };
}

/**
 * The delivery-level part of the list filter (state, domain, recipient on one delivery document), or
 * null when the filter has none: the same matches as the SQLite adapter's EXISTS.
 */
export function deliveryMatch(f: ListFilter): Doc | null {
  const and: Doc[] = [];
  if (f.state !== undefined) and.push({ state: Array.isArray(f.state) ? { $in: f.state } : f.state });
  if (f.domain !== undefined) and.push({ recipient: literal(`@${f.domain}`, true) });
  if (f.recipient !== undefined) and.push({ recipient: literal(f.recipient) });
  return and.length === 0 ? null : { $and: and };
}

/** Newest (default) or oldest message first. */
export function listOrder(f: ListFilter): { receivedAt: 1 | -1; _id: 1 | -1 } {
  const direction = f.order === 'oldest' ? 1 : -1;
  return { receivedAt: direction, _id: direction };
}

/**
 * Which delivery documents of `ids` hold / release / retry change, and how: the same rules as the
 * one-message operations (hold: queued; release: held, due now; retry: queued, due now, lease dropped).
 */
export function bulkChange(action: Exclude<BulkAction, 'remove'>, ids: string[], now: number): { filter: Doc; update: Doc } {
  const messageId = { $in: ids };
  if (action === 'hold') return { filter: { messageId, state: 'queued' }, update: { $set: { state: 'held' } } };
  if (action === 'release') return { filter: { messageId, state: 'held' }, update: { $set: { state: 'queued', nextAttemptAt: now } } };
  return { filter: { messageId, state: 'queued' }, update: { $set: { nextAttemptAt: now, leaseOwner: null, leaseUntil: null } } };
}

/** True when the driver sees a server that takes writes (a replica set primary, a standalone, mongos). */
export function hasWritableServer(servers: Iterable<{ isWritable: boolean }>): boolean {
  for (const server of servers) if (server.isWritable) return true;
  return false;
}
