/**
 * The MongoDB store's query documents, evaluated by mingo (an in-memory implementation of MongoDB's
 * query language), not by a MongoDB server: no server runs here. What they check is the rule each
 * document encodes; test/store-contract.test.ts checks the adapter against a real server when
 * MONGODB_URL is set.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRequire } from 'node:module';
import { find, Query, updateMany } from 'mingo';
import { bulkChange, CLAIM_ORDER, claimFilter, deliveryMatch, hasWritableServer, leaseUpdate, listFilter, listOrder, notTaken, type Doc } from '../shared/src/store/mongo-queries.ts';
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
