/**
 * The MongoDB store's rules as query documents (pure, unit-tested in test/mongo-store-units.test.ts):
 * which delivery documents a claim may lease, the update that leases them, their order, and the
 * admin list filter.
 */
import type { BulkAction, ClaimOptions, ListFilter } from './store.ts';
import type { Delivery } from '../types.ts';

export type Doc = Record<string, unknown>;

/** A delivery document: the Delivery, its position in the message's recipients, claim fields. */
export interface DeliveryDoc extends Delivery {
  /** Position in the message's recipients. */
  i: number;
  receivedAt: number;
  leaseOwner: string | null;
  leaseUntil: number | null;
  leaseToken?: string;
  expireAt?: Date;
}

/** What a put completes from: the stored message document's recipients, routes and received time. */
export interface StoredMessage {
  _id: string;
  /** Distinct recipients, in the sender's order. */
  recipients: string[];
  /** Each recipient's route, by position (schema 2; recipients are not field names: they hold dots). */
  routes?: (string | null)[];
  receivedAt: number;
}

/** Message documents written before schema 2, which do not name their routes. */
export const WITHOUT_ROUTES: Doc = { routes: { $exists: false } };

/** A message's routes by recipient position, from its delivery documents (null where a delivery is missing). */
export function routesOf(recipients: string[], deliveries: { recipient: string; route: string }[]): (string | null)[] {
  const route = new Map(deliveries.map((d) => [d.recipient, d.route]));
  return recipients.map((recipient) => route.get(recipient) ?? null);
}

/**
 * The delivery documents a put makes sure exist: one per recipient of the STORED message, with its
 * stored route, due at its stored received time; never from the repeated put, which may only complete
 * what a first put that stopped half-way left undone (insertMany unordered: the ones that exist
 * already fail on the unique index and stay as they are). `given`: routes for recipients a schema-1
 * document leaves unnamed; a recipient with no route at all is left out.
 */
export function deliveryDocs(stored: StoredMessage, given: Record<string, string>): DeliveryDoc[] {
  return stored.recipients.flatMap((recipient, i) => {
    const route = stored.routes?.[i] ?? given[recipient];
    if (typeof route !== 'string') return [];
    return [
      {
        messageId: stored._id,
        recipient,
        i,
        route,
        state: 'queued' as const,
        attempts: 0,
        nextAttemptAt: stored.receivedAt,
        lastAttemptAt: null,
        lastReply: null,
        lastNextHop: null,
        settledAt: null,
        receivedAt: stored.receivedAt,
        leaseOwner: null,
        leaseUntil: null,
      },
    ];
  });
}

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

/**
 * Lease to `owner` until now + leaseMs; `token` marks the documents this one claim call took. Due
 * at `now` at the latest: a lease that ends unsettled returns the delivery at once.
 */
export function leaseUpdate(o: ClaimOptions, token: string): Doc {
  return { $set: { leaseOwner: o.owner, leaseUntil: o.now + o.leaseMs, leaseToken: token }, $min: { nextAttemptAt: o.now } };
}

/** A message's deliveries still leased to `owner` (queued or held): what renew extends and settle changes. */
export function leasedTo(messageId: string, owner: string): Doc {
  return { messageId, state: { $in: ['queued', 'held'] }, leaseOwner: owner };
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
