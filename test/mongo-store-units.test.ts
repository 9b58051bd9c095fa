/**
 * The MongoDB store's query documents, evaluated by mingo (an in-memory implementation of MongoDB's
 * query language), not by a MongoDB server: no server runs here. What they check is the rule each
 * document encodes; test/store-contract.test.ts checks the adapter against a real server when
 * MONGODB_URL is set.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRequire } from 'node:module';
import { find, Query, updateMany, updateOne } from 'mingo';
import {
  bulkChange,
  CLAIM_ORDER,
  claimFilter,
  deliveryDocs,
  deliveryMatch,
  hasWritableServer,
  leasedTo,
  leaseUpdate,
  listFilter,
  listOrder,
  notTaken,
  routesOf,
  WITHOUT_ROUTES,
  type DeliveryDoc,
  type Doc,
  type StoredMessage,
} from '../shared/src/store/mongo-queries.ts';
import type { ClaimOptions } from '../shared/src/store/store.ts';

/** The driver's own class (not exported by its index): what a hello reply or a failed heartbeat becomes. */
const { ServerDescription } = createRequire(import.meta.url)('mongodb/lib/sdam/server_description.js') as {
  ServerDescription: new (address: string, hello?: Doc) => { type: string; isWritable: boolean };
};

const T0 = 1_700_000_000_000;
const MIN = 60_000;

/** A delivery document as the adapter writes it (fields that matter to claims). */
function delivery(id: string, fields: Doc = {}): Doc {
  return {
    messageId: id.split(' ')[0],
    recipient: id.split(' ')[1],
    route: 'r1',
    state: 'queued',
    nextAttemptAt: T0,
    lastAttemptAt: null,
    receivedAt: T0,
    leaseOwner: null,
    leaseUntil: null,
    ...fields,
  };
}

const names = (docs: Doc[]) => docs.map((d) => `${String(d['messageId'])} ${String(d['recipient'])}`);

function claimable(docs: Doc[], o: Partial<ClaimOptions>): string[] {
  const options: ClaimOptions = { now: T0, leaseMs: MIN, owner: 'w1', limit: 10, ...o };
  return names(docs.filter((d) => new Query(claimFilter(options)).test(d)));
}

describe('mongo store: claim filter', () => {
  const docs = [
    delivery('due a'),
    delivery('later a', { nextAttemptAt: T0 + 5 * MIN }),
    delivery('other a', { route: 'r2' }),
    delivery('held a', { state: 'held' }),
    delivery('delivered a', { state: 'delivered' }),
    delivery('failed a', { state: 'failed' }),
    delivery('leased a', { leaseOwner: 'w9', leaseUntil: T0 + MIN }),
    delivery('expired a', { leaseOwner: 'w9', leaseUntil: T0 }),
    delivery('tried a', { lastAttemptAt: T0 - 10 }),
    delivery('old a', { receivedAt: T0 - 60 * MIN, nextAttemptAt: T0 + 60 * MIN }),
  ];

  it('claims queued, due, unleased (or lease ended) deliveries of the route', () => {
    assert.deepEqual(claimable(docs, { route: 'r1' }), ['due a', 'expired a', 'tried a']);
    assert.deepEqual(claimable(docs, { route: 'r2' }), ['other a']);
    assert.deepEqual(claimable(docs, {}), ['due a', 'other a', 'expired a', 'tried a'], 'no route: any route');
  });

  it('a flush ignores the schedule but not leases, and skips what was attempted since it began', () => {
    assert.deepEqual(claimable(docs, { route: 'r1', ignoreSchedule: true }), ['due a', 'later a', 'expired a', 'tried a', 'old a']);
    assert.deepEqual(claimable(docs, { route: 'r1', ignoreSchedule: true, notAttemptedSince: T0 - 10 }), ['due a', 'later a', 'expired a', 'old a']);
    assert.deepEqual(claimable(docs, { route: 'r1', ignoreSchedule: true, notAttemptedSince: T0 - 9 }), ['due a', 'later a', 'expired a', 'tried a', 'old a']);
  });

  it('the expiry sweep takes deliveries of messages received before a time, due or not', () => {
    assert.deepEqual(claimable(docs, { receivedBefore: T0 - 60 * MIN + 1 }), ['old a']);
    assert.deepEqual(claimable(docs, { receivedBefore: T0 - 60 * MIN }), [], 'strictly before');
  });

  it('a lease taken by one owner keeps every other claim away until it ends, then it is claimable again', () => {
    const work = [delivery('m1 a'), delivery('m1 b')];
    const o: ClaimOptions = { route: 'r1', now: T0, leaseMs: 5 * MIN, owner: 'w1', limit: 10 };
    assert.equal(updateMany(work, claimFilter(o), leaseUpdate(o, 'token-1')).modifiedCount, 2);
    assert.deepEqual(work.map((d) => [d['leaseOwner'], d['leaseUntil'], d['leaseToken']]), [
      ['w1', T0 + 5 * MIN, 'token-1'],
      ['w1', T0 + 5 * MIN, 'token-1'],
    ]);
    // The same conditional update by another claimer matches nothing: the lease is the guard.
    const o2 = { ...o, owner: 'w2', now: T0 + 5 * MIN - 1 };
    assert.equal(updateMany(work, claimFilter(o2), leaseUpdate(o2, 'token-2')).matchedCount, 0);
    assert.equal(updateMany(work, claimFilter({ ...o2, ignoreSchedule: true }), leaseUpdate(o2, 'token-2')).matchedCount, 0);
    const o3 = { ...o, owner: 'w2', now: T0 + 5 * MIN };
    assert.equal(updateMany(work, claimFilter(o3), leaseUpdate(o3, 'token-3')).matchedCount, 2, 'lease ended: the work returns');
  });

  it('a lease makes the delivery due at the claim at the latest: a lease that ends unsettled returns it at once', () => {
    const work = [delivery('m1 a', { nextAttemptAt: T0 + 60 * MIN }), delivery('m1 b', { nextAttemptAt: T0 - MIN })];
    const o: ClaimOptions = { route: 'r1', now: T0, leaseMs: MIN, owner: 'w1#1', limit: 10, ignoreSchedule: true };
    updateMany(work, claimFilter(o), leaseUpdate(o, 'token-1'));
    assert.deepEqual(work.map((d) => d['nextAttemptAt']), [T0, T0 - MIN]);
    assert.deepEqual(claimable(work, { route: 'r1', now: T0 + MIN }), ['m1 a', 'm1 b'], 'no flush needed once the lease ended');
  });

  it('leasedTo: what renew extends and settle changes is the queued or held work still leased to that owner', () => {
    const work = [
      delivery('m1 a', { leaseOwner: 'w1#1', leaseUntil: T0 }),
      delivery('m1 b', { leaseOwner: 'w1#1', leaseUntil: T0, state: 'held' }),
      delivery('m1 c', { leaseOwner: 'w1#2', leaseUntil: T0 }),
      delivery('m1 d', { leaseOwner: 'w1#1', leaseUntil: T0, state: 'delivered' }),
      delivery('m2 a', { leaseOwner: 'w1#1', leaseUntil: T0 }),
    ];
    assert.deepEqual(names(work.filter((d) => new Query(leasedTo('m1', 'w1#1')).test(d))), ['m1 a', 'm1 b']);
    assert.equal(updateMany(work, leasedTo('m1', 'w9'), { $set: { leaseUntil: T0 + MIN } }).matchedCount, 0);
  });

  it('orders by received time, then message id, then route; notTaken skips groups already claimed', () => {
    const work = [
      delivery('m3 a', { receivedAt: T0 + 3 }),
      delivery('m1 b', { receivedAt: T0 + 1, route: 'r2' }),
      delivery('m2 a', { receivedAt: T0 + 1 }),
      delivery('m1 a', { receivedAt: T0 + 1, route: 'r1' }),
    ];
    assert.deepEqual(names(find(work, {}).sort(CLAIM_ORDER).all() as Doc[]), ['m1 a', 'm1 b', 'm2 a', 'm3 a']);
    const rest = find(work, notTaken([{ messageId: 'm1', route: 'r1' }, { messageId: 'm2', route: 'r1' }])).sort(CLAIM_ORDER).all() as Doc[];
    assert.deepEqual(names(rest), ['m1 b', 'm3 a']);
    assert.deepEqual(notTaken([]), {});
  });
});

describe('mongo store: list filter', () => {
  const messages = [
    { _id: 'a', mailFrom: 'Alice@Origin.test', recipients: ['u1@example.com', 'Boss@Sub.Example.com'], receivedAt: T0 },
    { _id: 'b', mailFrom: '', recipients: ['u2@EXAMPLE.COM'], receivedAt: T0 + 1 },
    { _id: 'c', mailFrom: 'a.b@x.test', recipients: ['someone@example.org'], receivedAt: T0 + 2 },
    { _id: 'd', mailFrom: 'axb@x.test', recipients: ['u1@notexample.com'], receivedAt: T0 + 3 },
  ];
  const ids = (filter: Parameters<typeof listFilter>[0]) => messages.filter((m) => new Query(listFilter(filter)).test(m)).map((m) => m._id);

  it('matches a domain exactly and case-insensitively, never a subdomain or a longer name', () => {
    assert.deepEqual(ids({ domain: 'example.com' }), ['a', 'b']);
    assert.deepEqual(ids({ domain: 'sub.example.com' }), ['a']);
    assert.deepEqual(ids({ domain: 'Example.ORG' }), ['c']);
  });

  it('matches sender and recipient text literally and case-insensitively; <> is the null sender', () => {
    assert.deepEqual(ids({ sender: 'alice' }), ['a']);
    assert.deepEqual(ids({ sender: 'a.b' }), ['c'], 'a dot is a dot, not any character');
    assert.deepEqual(ids({ sender: '<>' }), ['b']);
    assert.deepEqual(ids({ recipient: 'BOSS' }), ['a']);
    assert.deepEqual(ids({ recipient: 'u1@' }), ['a', 'd']);
  });

  it('combines filters; receivedBefore includes its own instant; no filter matches all', () => {
    assert.deepEqual(ids({ receivedBefore: T0 + 1 }), ['a', 'b']);
    assert.deepEqual(ids({ domain: 'example.com', recipient: 'u2' }), ['b']);
    assert.deepEqual(ids({ domain: 'example.com', recipient: 'u1', sender: '<>' }), []);
    assert.deepEqual(ids({}), ['a', 'b', 'c', 'd']);
  });
});

describe('mongo store: list filter on deliveries, order, bulk changes', () => {
  const docs = [
    delivery('m1 a@x.test', { state: 'delivered' }),
    delivery('m1 b@y.test'),
    delivery('m2 c@X.TEST', { state: 'held' }),
    delivery('m3 d@y.test', { state: 'failed' }),
    delivery('m4 e@sub.x.test'),
  ];
  const hits = (filter: Parameters<typeof deliveryMatch>[0]) => {
    const match = deliveryMatch(filter);
    return match === null ? null : names(docs.filter((d) => new Query(match).test(d)));
  };

  it('state, domain and recipient match one delivery document together', () => {
    assert.deepEqual(hits({ domain: 'x.test', state: 'queued' }), []);
    assert.deepEqual(hits({ domain: 'y.test', state: 'queued' }), ['m1 b@y.test']);
    assert.deepEqual(hits({ domain: 'x.test', state: ['queued', 'held'] }), ['m2 c@X.TEST'], 'exact domain, any case, not a subdomain');
    assert.deepEqual(hits({ recipient: 'D@', state: 'failed' }), ['m3 d@y.test']);
    assert.deepEqual(hits({ state: [] }), []);
    assert.equal(hits({ sender: 'x', receivedBefore: T0 }), null, 'nothing to match on deliveries: no $lookup');
  });

  it('sorts newest first unless asked for the oldest', () => {
    const messages = [{ _id: 'b', receivedAt: T0 }, { _id: 'a', receivedAt: T0 }, { _id: 'c', receivedAt: T0 + 1 }];
    assert.deepEqual((find(messages, {}).sort(listOrder({})).all() as Doc[]).map((m) => m['_id']), ['c', 'b', 'a']);
    assert.deepEqual((find(messages, {}).sort(listOrder({ order: 'oldest' })).all() as Doc[]).map((m) => m['_id']), ['a', 'b', 'c']);
  });

  it('bulk hold, release and retry change the deliveries the one-message operations change', () => {
    const apply = (action: 'hold' | 'release' | 'retry', ids: string[]) => {
      const copy: Doc[] = docs.map((d) => ({ ...d, leaseOwner: 'w', leaseUntil: T0 + MIN }));
      const { filter, update } = bulkChange(action, ids, T0 + 5);
      updateMany(copy, filter, update);
      return copy.map((d) => `${String(d['messageId'])} ${String(d['state'])} ${String(d['nextAttemptAt'])} ${String(d['leaseOwner'])}`);
    };
    assert.deepEqual(apply('hold', ['m1', 'm2', 'm4']), [`m1 delivered ${T0} w`, `m1 held ${T0} w`, `m2 held ${T0} w`, `m3 failed ${T0} w`, `m4 held ${T0} w`]);
    assert.deepEqual(apply('release', ['m1', 'm2']), [`m1 delivered ${T0} w`, `m1 queued ${T0} w`, `m2 queued ${T0 + 5} w`, `m3 failed ${T0} w`, `m4 queued ${T0} w`]);
    assert.deepEqual(apply('retry', ['m1', 'm2', 'm3']), [`m1 delivered ${T0} w`, `m1 queued ${T0 + 5} null`, `m2 held ${T0} w`, `m3 failed ${T0} w`, `m4 queued ${T0} w`]);
  });
});

describe('mongo store: readiness', () => {
  const server = (address: string, hello: Doc | undefined) => new ServerDescription(address, hello);
  it('is ready only while the driver sees a server that takes writes', () => {
    const primary = server('db1:27017', { ok: 1, isWritablePrimary: true, setName: 'rs0', hosts: ['db1:27017'], minWireVersion: 0, maxWireVersion: 25 });
    const secondary = server('db2:27017', { ok: 1, secondary: true, setName: 'rs0', hosts: ['db1:27017'], minWireVersion: 0, maxWireVersion: 25 });
    const standalone = server('db3:27017', { ok: 1, isWritablePrimary: true, minWireVersion: 0, maxWireVersion: 25 });
    const unknown = server('db1:27017', undefined); // what a failed heartbeat leaves
    assert.equal(hasWritableServer([primary, secondary]), true);
    assert.equal(hasWritableServer([standalone]), true);
    assert.equal(hasWritableServer([unknown, secondary]), false, 'primary lost: not ready');
    assert.equal(hasWritableServer([]), false);
  });
});

/**
 * insertMany(docs, { ordered: false }) against the unique index { messageId, recipient }, as MongoDB
 * runs it: every document whose key exists already fails (and is left as it is), the others go in.
 */
function insertUnordered(collection: Doc[], docs: readonly object[]): number {
  let inserted = 0;
  for (const doc of docs as Doc[]) {
    if (collection.some((d) => d['messageId'] === doc['messageId'] && d['recipient'] === doc['recipient'])) continue;
    collection.push({ ...doc });
    inserted++;
  }
  return inserted;
}

describe('mongo store: a repeated put completes only what the first left undone (issue 13)', () => {
  const stored: StoredMessage = { _id: 'm1', recipients: ['a@x.test', 'b@x.test'], routes: ['r1', 'r1'], receivedAt: T0 };
  const summary = (docs: readonly object[]) => (docs as Doc[]).map((d) => `${String(d['recipient'])} ${String(d['route'])} ${String(d['state'])} ${String(d['nextAttemptAt'] === T0 ? 'T0' : d['nextAttemptAt'])} i=${String(d['i'])}`);

  it('plans the deliveries of the stored recipients, with their stored routes and time, never the repeated put\'s', () => {
    // The repeated put names other recipients, other routes and a later time.
    const docs = deliveryDocs(stored, { 'a@x.test': 'r2', 'c@x.test': 'r2' });
    assert.deepEqual(summary(docs), ['a@x.test r1 queued T0 i=0', 'b@x.test r1 queued T0 i=1']);
    assert.ok(docs.every((d) => d.messageId === 'm1' && d.receivedAt === T0 && d.attempts === 0 && d.leaseOwner === null));
  });

  it('a put that stopped after the message document gets its missing delivery; the one that exists keeps its state and lease', () => {
    // The first put wrote a's delivery, then stopped; a was claimed and deferred meanwhile.
    const collection: Doc[] = [{ ...(deliveryDocs(stored, {})[0] as DeliveryDoc), attempts: 1, nextAttemptAt: T0 + 5 * MIN, leaseOwner: 'w1', leaseUntil: T0 + MIN, lastReply: '451 later' }];
    const inserted = insertUnordered(collection, deliveryDocs(stored, { 'a@x.test': 'r2', 'c@x.test': 'r2' }));
    assert.equal(inserted, 1);
    assert.deepEqual(
      find(collection, { messageId: 'm1' }).sort({ i: 1 }).all().map((d) => [d['recipient'], d['route'], d['attempts'], d['leaseOwner']]),
      [
        ['a@x.test', 'r1', 1, 'w1'],
        ['b@x.test', 'r1', 0, null],
      ],
    );
    assert.equal(find(collection, { recipient: 'c@x.test' }).all().length, 0, 'no delivery for a recipient the stored message does not have');
    assert.equal(insertUnordered(collection, deliveryDocs(stored, {})), 0, 'complete: a third put inserts nothing');
  });

  it('a schema-1 message document (no routes) takes the route given for its own recipients only', () => {
    const old: StoredMessage = { _id: 'm2', recipients: ['a@x.test', 'b@x.test'], receivedAt: T0 };
    assert.deepEqual(summary(deliveryDocs(old, { 'a@x.test': 'r3', 'b@x.test': 'r3', 'c@x.test': 'r3' })), ['a@x.test r3 queued T0 i=0', 'b@x.test r3 queued T0 i=1']);
    assert.deepEqual(summary(deliveryDocs(old, { 'a@x.test': 'r3' })), ['a@x.test r3 queued T0 i=0'], 'no route known: left out, not invented');
  });
});

describe('mongo store: migration 1 -> 2 (message documents name their routes)', () => {
  it('fills routes from the delivery documents, null where a put stopped half-way, and is idempotent', () => {
    const messages: Doc[] = [
      { _id: 'm1', recipients: ['a@x.test', 'b@y.test'], receivedAt: T0 },
      { _id: 'm2', recipients: ['c@x.test', 'd@x.test'], receivedAt: T0 }, // d's delivery was never written
      { _id: 'm3', recipients: ['e@x.test'], routes: ['r9'], receivedAt: T0 }, // written by schema 2 already
    ];
    const deliveries = [
      { messageId: 'm1', recipient: 'b@y.test', route: 'r2' },
      { messageId: 'm1', recipient: 'a@x.test', route: 'r1' },
      { messageId: 'm2', recipient: 'c@x.test', route: 'r1' },
    ];
    const step = () => {
      let changed = 0;
      for (const message of find(messages, WITHOUT_ROUTES).all()) {
        const found = deliveries.filter((d) => d.messageId === message['_id']);
        const routes = routesOf(message['recipients'] as string[], found);
        changed += updateOne(messages, { _id: message['_id'], ...WITHOUT_ROUTES }, { $set: { routes } }).modifiedCount;
      }
      return changed;
    };
    assert.equal(step(), 2);
    assert.deepEqual(messages.map((m) => [m['_id'], m['routes']]), [
      ['m1', ['r1', 'r2']],
      ['m2', ['r1', null]],
      ['m3', ['r9']],
    ]);
    assert.equal(step(), 0, 'a second run (another instance, or after a crash) changes nothing');
    // m2's missing delivery is completed by the redelivered put, with the route it names for d.
    assert.deepEqual(deliveryDocs(messages[1] as unknown as StoredMessage, { 'c@x.test': 'rX', 'd@x.test': 'r1' }).map((d) => [d.recipient, d.route]), [
      ['c@x.test', 'r1'],
      ['d@x.test', 'r1'],
    ]);
  });
});
