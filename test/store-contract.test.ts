/**
 * The store contract: every Store adapter must pass these tests. They run against SQLite always and
 * against MongoDB when MONGODB_URL is set.
 */
import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { ConfigError } from '../shared/src/runtime/config.ts';
import { createLogger } from '../shared/src/runtime/logger.ts';
import type { Logger } from '../shared/src/runtime/logger.ts';
import type { QueueStats, Store } from '../shared/src/store/store.ts';
import type { Delivery, MessageInfo, ReceivedMail } from '../shared/src/types.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { movableBody, openStoreThread } from '../shared/src/store/store-thread.ts';
import { spawnModule } from './support/processes.ts';

/** One empty database; `open` may be called several times to get several handles on it. */
interface Backend {
  open(): Promise<Store>;
  dispose(): Promise<void>;
}

const T0 = 1_700_000_000_000;
const MIN = 60_000;

function mail(id: string, rcptTo: string[], receivedAt: number, body?: Buffer): ReceivedMail {
  return {
    id,
    envelope: { mailFrom: 'sender@example.org', rcptTo },
    body: body ?? Buffer.from(`Subject: ${id}\r\n\r\nhello\r\n`),
    receivedAt,
  };
}

/** Every recipient routed to `route`. */
function via(route: string, rcpts: string[]): Record<string, string> {
  return Object.fromEntries(rcpts.map((r) => [r, route]));
}

async function bodyOf(store: Store, id: string): Promise<Buffer> {
  const stream = await store.readBody(id);
  return Buffer.concat((await stream.toArray()).map((c: Uint8Array | string) => Buffer.from(c)));
}

function keys(claimed: Awaited<ReturnType<Store['claim']>>): string[] {
  return claimed.flatMap((c) => c.deliveries.map((d) => `${d.messageId} ${d.recipient}`));
}

/** What getMessage says of a message put with mail(id, rcptTo, receivedAt) and nothing else. */
function info(id: string, rcptTo: string[], receivedAt: number): MessageInfo {
  return {
    id,
    mailFrom: 'sender@example.org',
    recipients: [...new Set(rcptTo)],
    envelope: { mailFrom: 'sender@example.org', rcptTo },
    size: mail(id, [], 0).body.length,
    receivedAt,
    trace: {},
    delayWarnedAt: null,
  };
}

/** A delivery as put leaves it: queued, never attempted, due at receivedAt. */
function untried(messageId: string, recipient: string, route: string, nextAttemptAt: number): Delivery {
  return {
    messageId,
    recipient,
    route,
    state: 'queued',
    attempts: 0,
    nextAttemptAt,
    lastAttemptAt: null,
    lastReply: null,
    lastNextHop: null,
    settledAt: null,
  };
}

const EMPTY: QueueStats = { queued: {}, held: 0, delivered: 0, failed: 0, messages: 0, oldestQueuedAt: null };

/** Nothing is claimable, however asked: by route, any route, ignoring the schedule, by the expiry sweep. */
async function assertNothingClaimable(store: Store, now: number): Promise<void> {
  const base = { now, leaseMs: MIN, owner: 'prober', limit: 100 };
  for (const extra of [{}, { ignoreSchedule: true }, { receivedBefore: now + 1 }]) {
    assert.deepEqual(await store.claim({ ...base, ...extra }), [], `claim ${JSON.stringify(extra)}`);
  }
}

function contract(name: string, fresh: () => Promise<Backend>): void {
  describe(`store contract: ${name}`, () => {
    let backend: Backend;
    let store: Store;
    const extra: Store[] = [];

    async function another(): Promise<Store> {
      const s = await backend.open();
      extra.push(s);
      return s;
    }

    beforeEach(async () => {
      backend = await fresh();
      store = await backend.open();
    });

    afterEach(async () => {
      try {
        for (const s of extra.splice(0)) await s.close();
        await store.close();
      } finally {
        await backend.dispose();
      }
    });

    it('put stores the message and one queued delivery per distinct recipient, due at receivedAt', async () => {
      const rcpts = ['a@x.test', 'b@x.test', 'a@x.test', 'A@x.test'];
      assert.equal(await store.put(mail('m1', rcpts, T0), via('r1', rcpts)), true);
      const got = await store.getMessage('m1');
      assert.ok(got);
      assert.deepEqual(got, {
        message: {
          id: 'm1',
          mailFrom: 'sender@example.org',
          recipients: ['a@x.test', 'b@x.test', 'A@x.test'],
          envelope: { mailFrom: 'sender@example.org', rcptTo: rcpts },
          size: mail('m1', [], T0).body.length,
          receivedAt: T0,
          trace: {},
          delayWarnedAt: null,
        },
        deliveries: ['a@x.test', 'b@x.test', 'A@x.test'].map((r) => untried('m1', r, 'r1', T0)),
        attempts: [],
      });
    });

    it('put keeps the whole envelope (DSN parameters, SMTPUTF8, 8BITMIME, client) and the trace context', async () => {
      const rcpts = ['a@x.test', 'b@x.test', 'c@x.test'];
      const m = mail('m1', rcpts, T0);
      m.envelope = {
        mailFrom: 'sender@example.org',
        rcptTo: rcpts,
        ret: 'HDRS',
        envid: 'QQ314159+2Bx',
        dsn: { 'a@x.test': { notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;A@x.test' }, 'b@x.test': { notify: ['NEVER'] } },
        smtputf8: true,
        body8bit: true,
        clientHelo: 'client.origin.test',
        clientAddress: '2001:db8::25',
      };
      m.trace = { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', tracestate: 'vendor=x' };
      const envelope = structuredClone(m.envelope);
      await store.put(m, via('r1', rcpts));

      const expected = { ...info('m1', rcpts, T0), envelope, trace: { ...m.trace } };
      assert.deepEqual((await store.getMessage('m1'))?.message, expected);
      assert.deepEqual((await store.list({})).items[0]?.message, expected);
      const [claimed] = await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 1 });
      assert.deepEqual(claimed?.message, expected, 'the deliverer gets the DSN parameters with its claim');

      await store.close();
      store = await backend.open();
      assert.deepEqual((await store.getMessage('m1'))?.message, expected);
    });

    it('put keeps the null sender and routes each recipient to its own next hop', async () => {
      const m = mail('m1', ['a@x.test', 'b@y.test'], T0);
      m.envelope.mailFrom = '';
      await store.put(m, { 'a@x.test': 'hop-x:25', 'b@y.test': 'hop-y:25' });
      const got = await store.getMessage('m1');
      assert.equal(got?.message.mailFrom, '');
      assert.deepEqual(
        got?.deliveries.map((d) => [d.recipient, d.route]),
        [
          ['a@x.test', 'hop-x:25'],
          ['b@y.test', 'hop-y:25'],
        ],
      );
    });

    it('put is idempotent on the id: a second put returns false and changes nothing', async () => {
      const first = mail('m1', ['a@x.test', 'b@x.test'], T0, Buffer.from('first body\r\n'));
      assert.equal(await store.put(first, via('r1', ['a@x.test', 'b@x.test'])), true);
      const [c] = await store.claim({ route: 'r1', now: T0, leaseMs: 10 * MIN, owner: 'w1', limit: 10 });
      assert.ok(c);
      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'deferred', reply: '451 later', nextAttemptAt: T0 + 5 * MIN }], T0);
      const before = await store.getMessage('m1');

      const second = mail('m1', ['a@x.test', 'c@x.test'], T0 + MIN, Buffer.from('second body\r\n'));
      assert.equal(await store.put(second, via('r2', ['a@x.test', 'c@x.test'])), false);

      assert.deepEqual(await store.getMessage('m1'), before);
      assert.deepEqual(await bodyOf(store, 'm1'), Buffer.from('first body\r\n'));
      assert.deepEqual(await store.routes(), ['r1']);
      assert.equal((await store.stats()).messages, 1);
      // b@x.test is still leased by w1: the redelivered put did not reset its lease.
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w2', limit: 10 }), []);
    });

    it('readBody returns the exact bytes: 8-bit, CRLF, bare LF, NUL, a lone dot line', async () => {
      const all = Buffer.alloc(256);
      for (let i = 0; i < 256; i++) all[i] = i;
      const body = Buffer.concat([
        Buffer.from('Received: from x\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\n\r\n'),
        Buffer.from('line one\r\n.\r\n..\r\nbare lf\nbare cr\r\r\n'),
        all,
        Buffer.from('\r\n\u00e9\u00fc 8bit \u2603\r\n.\r\n'),
        Buffer.from([0xff, 0xfe, 0x00, 0x0d]),
      ]);
      await store.put(mail('m1', ['a@x.test'], T0, body), via('r1', ['a@x.test']));
      const got = await bodyOf(store, 'm1');
      assert.equal(got.length, body.length);
      assert.ok(got.equals(body), 'body bytes differ');
      assert.equal((await store.getMessage('m1'))?.message.size, body.length);
    });

    it('readBody returns a multi-megabyte body intact', async () => {
      const body = randomBytes(3 * 1024 * 1024 + 17);
      // A copy: the store in its thread moves a large body instead of copying it (Store.put).
      await store.put(mail('big', ['a@x.test'], T0, Buffer.from(body)), via('r1', ['a@x.test']));
      assert.ok((await bodyOf(store, 'big')).equals(body));
    });

    it('getMessage of an unknown id is null; readBody of an unknown id rejects', async () => {
      assert.equal(await store.getMessage('nope'), null);
      await assert.rejects(store.readBody('nope'), /nope/);
    });

    it('claim returns due work of one route, grouped by message, oldest first, at most limit messages', async () => {
      // Put out of order: receivedAt decides the order, not insertion.
      await store.put(mail('m3', ['c1@x.test'], T0 + 3), via('r1', ['c1@x.test']));
      await store.put(mail('m1', ['a1@x.test', 'a2@y.test', 'a3@x.test'], T0 + 1), {
        'a1@x.test': 'r1',
        'a2@y.test': 'r2',
        'a3@x.test': 'r1',
      });
      await store.put(mail('m2', ['b1@y.test'], T0 + 2), via('r2', ['b1@y.test']));
      await store.put(mail('m4', ['d1@x.test'], T0 + 4), via('r1', ['d1@x.test']));
      await store.put(mail('future', ['f@x.test'], T0 + 60 * MIN), via('r1', ['f@x.test']));

      const now = T0 + MIN;
      const first = await store.claim({ route: 'r1', now, leaseMs: MIN, owner: 'w1', limit: 2 });
      assert.deepEqual(
        first.map((c) => [c.message.id, c.route, c.deliveries.map((d) => d.recipient)]),
        [
          ['m1', 'r1', ['a1@x.test', 'a3@x.test']],
          ['m3', 'r1', ['c1@x.test']],
        ],
      );
      assert.deepEqual(first[0]?.message, info('m1', ['a1@x.test', 'a2@y.test', 'a3@x.test'], T0 + 1));
      for (const d of first.flatMap((c) => c.deliveries)) {
        assert.equal(d.state, 'queued');
        assert.equal(d.route, 'r1');
      }

      const second = await store.claim({ route: 'r1', now, leaseMs: MIN, owner: 'w1', limit: 2 });
      assert.deepEqual(keys(second), ['m4 d1@x.test']); // 'future' is not due yet

      const other = await store.claim({ route: 'r2', now, leaseMs: MIN, owner: 'w1', limit: 10 });
      assert.deepEqual(keys(other), ['m1 a2@y.test', 'm2 b1@y.test']);

      assert.deepEqual(await store.claim({ route: 'r3', now, leaseMs: MIN, owner: 'w1', limit: 10 }), []);
    });

    it('a claim finds the oldest due work however much is deferred or leased ahead of it, and however far behind', async () => {
      // 12 messages deferred to later, 3 leased, then 4 due; received in that order, put in reverse.
      const ids = Array.from({ length: 19 }, (_, i) => `m${String(i).padStart(2, '0')}`);
      for (const [i, id] of [...ids.entries()].reverse()) await store.put(mail(id, [`${id}@x.test`], T0 + i), via('r1', [`${id}@x.test`]));
      const ahead = await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: 10 * MIN, owner: 'w0', limit: 15 });
      assert.equal(ahead.length, 15);
      for (const c of ahead.slice(0, 12)) {
        await store.settle(c.message.id, 'w0', [{ recipient: `${c.message.id}@x.test`, result: 'deferred', reply: '451 later', nextAttemptAt: T0 + 60 * MIN }], T0 + MIN);
      }
      const now = T0 + 2 * MIN;
      for (const [limit, expected] of [[1, ['m15']], [2, ['m16', 'm17']], [10, ['m18']]] as const) {
        const claimed = await store.claim({ route: 'r1', now, leaseMs: MIN, owner: `w${limit}`, limit });
        assert.deepEqual(claimed.map((c) => c.message.id), expected, `limit ${limit}`);
      }
      assert.deepEqual(await store.claim({ route: 'r1', now, leaseMs: MIN, owner: 'w9', limit: 1 }), [], 'nothing due is left');
      // A flush takes the deferred ones too, oldest first, and not the leased.
      const flushed = await store.claim({ route: 'r1', now, ignoreSchedule: true, leaseMs: MIN, owner: 'w8', limit: 3 });
      assert.deepEqual(flushed.map((c) => c.message.id), ['m00', 'm01', 'm02']);
    });

    it('a claimed delivery is not claimable again until its lease expires, then it is', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      const leaseMs = 5 * MIN;
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0, leaseMs, owner: 'w1', limit: 10 })), ['m1 a@x.test']);

      for (const owner of ['w1', 'w2']) {
        assert.deepEqual(await store.claim({ route: 'r1', now: T0 + leaseMs - 1, leaseMs, owner, limit: 10 }), []);
        assert.deepEqual(
          await store.claim({ route: 'r1', now: T0 + leaseMs - 1, ignoreSchedule: true, leaseMs, owner, limit: 10 }),
          [],
          'ignoreSchedule does not override a lease',
        );
      }
      // Lease ended (the deliverer crashed): the work returns, to anyone.
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + leaseMs, leaseMs, owner: 'w2', limit: 10 })), ['m1 a@x.test']);
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + leaseMs + 1, leaseMs, owner: 'w3', limit: 10 }), []);
    });

    it('two handles claiming in turn with different owners never get the same delivery', async () => {
      const a = store;
      const b = await another();
      const all = new Set<string>();
      for (let i = 0; i < 40; i++) {
        const rcpts = [`u${i}a@x.test`, `u${i}b@x.test`, `u${i}c@x.test`];
        await (i % 2 ? a : b).put(mail(`m${String(i).padStart(3, '0')}`, rcpts, T0 + i), via('r1', rcpts));
        for (const r of rcpts) all.add(`m${String(i).padStart(3, '0')} ${r}`);
      }
      const seen = new Map<string, string>();
      for (let round = 0; round < 100; round++) {
        const [h, owner] = round % 2 ? [a, 'owner-a'] : [b, 'owner-b'];
        const got = await h.claim({ route: 'r1', now: T0 + MIN, leaseMs: 10 * MIN, owner, limit: 3 });
        for (const k of keys(got)) {
          assert.ok(!seen.has(k), `${k} claimed by ${owner} and by ${seen.get(k)}`);
          seen.set(k, owner);
        }
      }
      assert.deepEqual(new Set(seen.keys()), all);
      assert.ok([...seen.values()].includes('owner-a') && [...seen.values()].includes('owner-b'));
    });

    it('two handles claiming at the same time never get the same delivery', async () => {
      const handles = [store, await another(), await another()];
      const all = new Set<string>();
      for (let i = 0; i < 30; i++) {
        const rcpts = [`u${i}a@x.test`, `u${i}b@x.test`];
        await store.put(mail(`m${i}`, rcpts, T0 + i), via('r1', rcpts));
        for (const r of rcpts) all.add(`m${i} ${r}`);
      }
      const results = await Promise.all(
        handles.flatMap((h, n) =>
          Array.from({ length: 15 }, () => h.claim({ route: 'r1', now: T0 + MIN, leaseMs: 10 * MIN, owner: `w${n}`, limit: 2 })),
        ),
      );
      const claimed = results.flatMap(keys);
      assert.equal(new Set(claimed).size, claimed.length, 'a delivery was claimed twice');
      assert.deepEqual(new Set(claimed), all);
    });

    it('settle delivered keeps the delivery as a record; the body goes once nothing is queued or held', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });

      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'delivered', reply: '250 2.0.0 ok', nextHop: '10.0.0.5:25' }], T0 + 1);
      let got = await store.getMessage('m1');
      assert.deepEqual(got?.deliveries[0], {
        messageId: 'm1',
        recipient: 'a@x.test',
        route: 'r1',
        state: 'delivered',
        attempts: 1,
        nextAttemptAt: T0,
        lastAttemptAt: T0 + 1,
        lastReply: '250 2.0.0 ok',
        lastNextHop: '10.0.0.5:25',
        settledAt: T0 + 1,
      });
      assert.equal(got?.deliveries[1]?.state, 'queued');
      assert.ok(await bodyOf(store, 'm1'), 'b@x.test still needs the body');
      assert.deepEqual(await store.stats(), { ...EMPTY, queued: { r1: 1 }, delivered: 1, messages: 1, oldestQueuedAt: T0 });

      await store.settle('m1', 'w1', [{ recipient: 'b@x.test', result: 'delivered', reply: '250 2.0.0 ok', nextHop: '10.0.0.5:25' }], T0 + 2);
      got = await store.getMessage('m1');
      assert.ok(got, 'the message is kept as a record');
      assert.deepEqual(got.message, info('m1', ['a@x.test', 'b@x.test'], T0));
      assert.deepEqual(got.deliveries.map((d) => [d.recipient, d.state, d.settledAt]), [
        ['a@x.test', 'delivered', T0 + 1],
        ['b@x.test', 'delivered', T0 + 2],
      ]);
      await assert.rejects(store.readBody('m1'), /m1/, 'the body is gone');
      assert.deepEqual(await store.stats(), { ...EMPTY, delivered: 2 });
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);
      await assertNothingClaimable(store, T0 + 10 * MIN);
    });

    it('settle deferred queues again at nextAttemptAt; ignoreSchedule claims it early; notAttemptedSince excludes it', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      const attemptAt = T0 + 1000;
      const retryAt = T0 + 30 * MIN;
      await store.settle(
        'm1',
        'w1',
        [{ recipient: 'a@x.test', result: 'deferred', reply: '421 4.4.2 busy', nextAttemptAt: retryAt, nextHop: '10.0.0.5:25' }],
        attemptAt,
      );

      const d = (await store.getMessage('m1'))?.deliveries[0];
      assert.deepEqual(d, {
        messageId: 'm1',
        recipient: 'a@x.test',
        route: 'r1',
        state: 'queued',
        attempts: 1,
        nextAttemptAt: retryAt,
        lastAttemptAt: attemptAt,
        lastReply: '421 4.4.2 busy',
        lastNextHop: '10.0.0.5:25',
        settledAt: null,
      });
      assert.ok(await bodyOf(store, 'm1'), 'a deferred delivery keeps the body');
      assert.equal(await store.nextDue('r1'), retryAt);

      // The lease was released, but it is not due yet.
      assert.deepEqual(await store.claim({ route: 'r1', now: retryAt - 1, leaseMs: MIN, owner: 'w2', limit: 10 }), []);
      // A flush that started at or before the last attempt does not try it again.
      for (const since of [attemptAt - 1, attemptAt]) {
        assert.deepEqual(
          await store.claim({ route: 'r1', now: retryAt - 1, ignoreSchedule: true, notAttemptedSince: since, leaseMs: MIN, owner: 'w2', limit: 10 }),
          [],
        );
      }
      // A flush started after the last attempt does.
      const flushed = await store.claim({
        route: 'r1',
        now: retryAt - 1,
        ignoreSchedule: true,
        notAttemptedSince: attemptAt + 1,
        leaseMs: MIN,
        owner: 'w2',
        limit: 10,
      });
      assert.deepEqual(keys(flushed), ['m1 a@x.test']);
      assert.equal(flushed[0]?.deliveries[0]?.attempts, 1);
      assert.equal(flushed[0]?.deliveries[0]?.lastReply, '421 4.4.2 busy');

      // Deferred again: now claimable by schedule once due.
      await store.settle('m1', 'w2', [{ recipient: 'a@x.test', result: 'deferred', reply: '451 again', nextAttemptAt: retryAt }], retryAt - 1);
      assert.equal((await store.getMessage('m1'))?.deliveries[0]?.attempts, 2);
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: retryAt, leaseMs: MIN, owner: 'w3', limit: 10 })), ['m1 a@x.test']);
    });

    it('settle failed keeps the delivery with state failed and the reply, and it is never claimed', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      await store.settle(
        'm1',
        'w1',
        [
          { recipient: 'a@x.test', result: 'failed', reply: '550 5.1.1 no such user', nextHop: '10.0.0.5:25' },
          { recipient: 'b@x.test', result: 'delivered', reply: '250 ok', nextHop: '10.0.0.5:25' },
        ],
        T0 + 5,
      );
      const got = await store.getMessage('m1');
      assert.ok(got, 'a message with a failed delivery is kept');
      assert.deepEqual(got.deliveries[0], {
        messageId: 'm1',
        recipient: 'a@x.test',
        route: 'r1',
        state: 'failed',
        attempts: 1,
        nextAttemptAt: T0,
        lastAttemptAt: T0 + 5,
        lastReply: '550 5.1.1 no such user',
        lastNextHop: '10.0.0.5:25',
        settledAt: T0 + 5,
      });
      assert.equal(got.deliveries[1]?.state, 'delivered');
      await assert.rejects(store.readBody('m1'), /m1/, 'nothing left to deliver: the body is gone');
      for (const now of [T0 + MIN, T0 + 365 * 24 * 60 * MIN]) await assertNothingClaimable(store, now);
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);
      assert.deepEqual(await store.stats(), { ...EMPTY, delivered: 1, failed: 1 });
    });

    it('settle appends one attempt record per outcome, oldest first, with the next hop that answered', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      await store.settle(
        'm1',
        'w1',
        [
          { recipient: 'a@x.test', result: 'deferred', reply: '451 4.3.0 try later', nextAttemptAt: T0 + MIN, nextHop: '10.0.0.5:25' },
          { recipient: 'b@x.test', result: 'deferred', reply: 'connect ECONNREFUSED', nextAttemptAt: T0 + MIN },
        ],
        T0 + 10,
      );
      assert.equal((await store.getMessage('m1'))?.deliveries[1]?.lastNextHop, null, 'no next hop answered');
      await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w2', limit: 10 });
      await store.settle(
        'm1',
        'w2',
        [
          { recipient: 'b@x.test', result: 'failed', reply: '550 5.1.1 no such user', nextHop: '10.0.0.5:25' },
          { recipient: 'a@x.test', result: 'delivered', reply: '250 2.0.0 ok', nextHop: '10.0.0.6:25' },
        ],
        T0 + MIN + 5,
      );
      const got = await store.getMessage('m1');
      assert.deepEqual(got?.attempts, [
        { recipient: 'a@x.test', at: T0 + 10, nextHop: '10.0.0.5:25', result: 'deferred', reply: '451 4.3.0 try later' },
        { recipient: 'b@x.test', at: T0 + 10, nextHop: null, result: 'deferred', reply: 'connect ECONNREFUSED' },
        { recipient: 'b@x.test', at: T0 + MIN + 5, nextHop: '10.0.0.5:25', result: 'failed', reply: '550 5.1.1 no such user' },
        { recipient: 'a@x.test', at: T0 + MIN + 5, nextHop: '10.0.0.6:25', result: 'delivered', reply: '250 2.0.0 ok' },
      ]);
      assert.deepEqual(
        got?.deliveries.map((d) => [d.recipient, d.state, d.attempts, d.lastNextHop, d.lastReply, d.settledAt]),
        [
          ['a@x.test', 'delivered', 2, '10.0.0.6:25', '250 2.0.0 ok', T0 + MIN + 5],
          ['b@x.test', 'failed', 2, '10.0.0.5:25', '550 5.1.1 no such user', T0 + MIN + 5],
        ],
      );
    });

    it('settle by an owner whose lease was taken over changes nothing', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'slow', limit: 10 });
      // slow's lease expires and fast takes the work over.
      assert.equal(keys(await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'fast', limit: 10 })).length, 2);
      const before = await store.getMessage('m1');

      await store.settle(
        'm1',
        'slow',
        [
          { recipient: 'a@x.test', result: 'delivered', reply: '250 ok' },
          { recipient: 'b@x.test', result: 'failed', reply: '550 no' },
        ],
        T0 + MIN + 1,
      );
      assert.deepEqual(await store.getMessage('m1'), before);
      // A settle for a never-claimed owner or unknown message is harmless too.
      await store.settle('m1', 'nobody', [{ recipient: 'a@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 }], T0 + MIN + 1);
      await store.settle('unknown', 'fast', [{ recipient: 'a@x.test', result: 'delivered', reply: '250' }], T0 + MIN + 1);
      assert.deepEqual(await store.getMessage('m1'), before);
      // Still leased by fast: nobody else can claim it.
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + MIN + 2, leaseMs: MIN, owner: 'slow', limit: 10 }), []);

      // The current owner's settle works.
      await store.settle(
        'm1',
        'fast',
        [
          { recipient: 'a@x.test', result: 'delivered', reply: '250 ok' },
          { recipient: 'b@x.test', result: 'delivered', reply: '250 ok' },
        ],
        T0 + MIN + 3,
      );
      const after = await store.getMessage('m1');
      assert.deepEqual(after?.deliveries.map((d) => d.state), ['delivered', 'delivered']);
      assert.deepEqual(after?.attempts.map((a) => `${a.recipient} ${a.result}`), ['a@x.test delivered', 'b@x.test delivered'], 'the stale settle left no attempt');
    });

    it('renew extends a lease while it is held; the work returns only when renewals stop', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.put(mail('m2', ['c@x.test'], T0), via('r1', ['c@x.test']));
      assert.equal(keys(await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1#1', limit: 10 })).length, 3);
      // Renewed just before the end: nobody may take it at the old end, nor until the new one.
      const renewed = await store.renew([{ messageId: 'm1', owner: 'w1#1' }, { messageId: 'm2', owner: 'w1#1' }], T0 + MIN - 1 + MIN);
      assert.deepEqual(renewed, [{ messageId: 'm1', owner: 'w1#1' }, { messageId: 'm2', owner: 'w1#1' }]);
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w2#1', limit: 10 }), []);
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + 2 * MIN - 2, ignoreSchedule: true, leaseMs: MIN, owner: 'w2#1', limit: 10 }), []);
      // Renewals stopped (the deliverer was killed): at the renewed end the work returns.
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + 2 * MIN - 1, leaseMs: MIN, owner: 'w2#1', limit: 10 })), ['m1 a@x.test', 'm1 b@x.test', 'm2 c@x.test']);
      assert.equal(await store.nextDue('r1'), T0, 'claiming changed no schedule that was due already');
    });

    it('a lease that ended and went to another claim, even of the same deliverer, can neither be renewed nor settled', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1#1', limit: 10 });
      assert.equal(keys(await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w1#2', limit: 10 })).length, 1);
      assert.deepEqual(await store.renew([{ messageId: 'm1', owner: 'w1#1' }, { messageId: 'unknown', owner: 'w1#2' }], T0 + 3 * MIN), [], 'the first claim lost it');
      await store.settle('m1', 'w1#1', [{ recipient: 'a@x.test', result: 'delivered', reply: '250 ok' }], T0 + MIN + 1);
      assert.equal((await store.getMessage('m1'))?.deliveries[0]?.state, 'queued', 'the stale attempt settles nothing');
      // The second claim's lease was not extended by the failed renewal: it ends at T0 + 2 MIN.
      assert.equal(keys(await store.claim({ route: 'r1', now: T0 + 2 * MIN, leaseMs: MIN, owner: 'w2#1', limit: 10 })).length, 1);
    });

    it('settled or dropped leases are not renewed', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.put(mail('m2', ['b@x.test'], T0), via('r1', ['b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1#1', limit: 10 });
      await store.settle('m1', 'w1#1', [{ recipient: 'a@x.test', result: 'deferred', reply: '451 later', nextAttemptAt: T0 + 10 * MIN }], T0 + 1);
      assert.equal(await store.retryNow('m2', T0 + 2), 1);
      assert.deepEqual(await store.renew([{ messageId: 'm1', owner: 'w1#1' }, { messageId: 'm2', owner: 'w1#1' }], T0 + 5 * MIN), []);
      assert.deepEqual(await store.renew([], T0 + 5 * MIN), []);
      assert.equal((await store.getMessage('m1'))?.deliveries[0]?.nextAttemptAt, T0 + 10 * MIN);
    });

    it('a delivery claimed ahead of its schedule (a flush) whose lease ends unsettled is due at once, not at its old retry time', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1#1', limit: 10 });
      await store.settle('m1', 'w1#1', [{ recipient: 'a@x.test', result: 'deferred', reply: '421 down', nextAttemptAt: T0 + 60 * MIN }], T0 + 1);
      const flushedAt = T0 + 2 * MIN;
      assert.equal(keys(await store.claim({ route: 'r1', now: flushedAt, ignoreSchedule: true, notAttemptedSince: flushedAt, leaseMs: MIN, owner: 'w1#2', limit: 10 })).length, 1);
      // w1 is killed mid-attempt. Once the lease ends, an ordinary claim (no flush) takes it.
      assert.deepEqual(await store.claim({ route: 'r1', now: flushedAt + MIN - 1, leaseMs: MIN, owner: 'w2#1', limit: 10 }), []);
      const taken = await store.claim({ route: 'r1', now: flushedAt + MIN, leaseMs: MIN, owner: 'w2#1', limit: 10 });
      assert.deepEqual(keys(taken), ['m1 a@x.test']);
      assert.equal(taken[0]?.deliveries[0]?.attempts, 1, 'the killed attempt recorded nothing');
    });

    it('stats, routes and nextDue describe the queue', async () => {
      assert.deepEqual(await store.stats(), EMPTY);
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);

      await store.put(mail('m0', ['z@x.test'], T0), via('r1', ['z@x.test']));
      await store.put(mail('m1', ['a@x.test', 'b@y.test'], T0 + 10), { 'a@x.test': 'r1', 'b@y.test': 'r2' });
      await store.put(mail('m2', ['c@x.test', 'd@x.test'], T0 + 20), via('r1', ['c@x.test', 'd@x.test']));
      await store.put(mail('m3', ['e@z.test'], T0 + 30), via('r3', ['e@z.test']));
      // m0, the oldest, is held: counted as held, not as queued.
      assert.equal(await store.hold('m0'), 1);

      assert.deepEqual(await store.stats(), { queued: { r1: 3, r2: 1, r3: 1 }, held: 1, delivered: 0, failed: 0, messages: 4, oldestQueuedAt: T0 + 10 });
      assert.deepEqual((await store.routes()).sort(), ['r1', 'r2', 'r3']);
      assert.equal(await store.nextDue('r1'), T0 + 10);
      assert.equal(await store.nextDue('r3'), T0 + 30);
      assert.equal(await store.nextDue('nowhere'), null);

      // m1: r1 delivered, r2 failed -> m1 has no queued delivery left.
      await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w', limit: 1 });
      await store.claim({ route: 'r2', now: T0 + MIN, leaseMs: MIN, owner: 'w', limit: 1 });
      await store.settle(
        'm1',
        'w',
        [
          { recipient: 'a@x.test', result: 'delivered', reply: '250' },
          { recipient: 'b@y.test', result: 'failed', reply: '550' },
        ],
        T0 + MIN,
      );
      // m3 deferred far ahead.
      await store.claim({ route: 'r3', now: T0 + MIN, leaseMs: MIN, owner: 'w', limit: 1 });
      await store.settle('m3', 'w', [{ recipient: 'e@z.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 99 * MIN }], T0 + MIN);

      // m1 is a record now: it no longer counts as a message in the queue.
      assert.deepEqual(await store.stats(), { queued: { r1: 2, r3: 1 }, held: 1, delivered: 1, failed: 1, messages: 3, oldestQueuedAt: T0 + 20 });
      assert.deepEqual((await store.routes()).sort(), ['r1', 'r3']);
      assert.equal(await store.nextDue('r2'), null);
      assert.equal(await store.nextDue('r3'), T0 + 99 * MIN);
      // A leased delivery still counts as queued.
      await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w', limit: 1 });
      assert.deepEqual((await store.stats()).queued, { r1: 2, r3: 1 });
      assert.equal(await store.nextDue('r1'), T0 + 20);
    });

    it('claim without a route takes due work of every route, each entry of one route', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@y.test'], T0 + 1), { 'a@x.test': 'r1', 'b@y.test': 'r2' });
      await store.put(mail('m2', ['c@y.test'], T0 + 2), via('r2', ['c@y.test']));
      await store.put(mail('future', ['f@x.test'], T0 + 60 * MIN), via('r1', ['f@x.test']));
      await store.put(mail('held', ['h@z.test'], T0), via('r3', ['h@z.test']));
      await store.hold('held');

      const got = await store.claim({ now: T0 + MIN, leaseMs: MIN, owner: 'w1', limit: 10 });
      assert.deepEqual(keys(got).sort(), ['m1 a@x.test', 'm1 b@y.test', 'm2 c@y.test']);
      for (const c of got) {
        for (const d of c.deliveries) assert.equal(d.route, c.route, `${d.messageId} ${d.recipient} in an entry of route ${c.route}`);
      }
      const order = got.map((c) => c.message.receivedAt);
      assert.deepEqual(order, [...order].sort((x, y) => x - y), 'oldest message first');
      assert.deepEqual(await store.claim({ now: T0 + MIN, leaseMs: MIN, owner: 'w2', limit: 10 }), [], 'all leased now');
    });

    it('claim with receivedBefore takes queued work of older messages, due or not, but not leased, held or final work', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.put(mail('m5', ['e@x.test', 'f@x.test'], T0 + 1), via('r1', ['e@x.test', 'f@x.test']));
      await store.claim({ route: 'r1', now: T0 + 5, leaseMs: 10 * MIN, owner: 'w', limit: 10 });
      // m1: deferred far ahead; m5: e failed, f still leased by w.
      await store.settle('m1', 'w', [{ recipient: 'a@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 99 * MIN }], T0 + 5);
      await store.settle('m5', 'w', [{ recipient: 'e@x.test', result: 'failed', reply: '550' }], T0 + 5);
      await store.put(mail('m2', ['b@y.test'], T0 + 10), via('r2', ['b@y.test']));
      await store.put(mail('m3', ['c@x.test'], T0 + 20), via('r1', ['c@x.test']));
      await store.put(mail('m4', ['d@x.test'], T0), via('r1', ['d@x.test']));
      await store.hold('m4');

      const now = T0 + MIN;
      const sweep = { now, leaseMs: MIN, owner: 'sweeper', limit: 10 };
      assert.deepEqual(await store.claim({ ...sweep, route: 'r2', receivedBefore: T0 + 10 }), [], 'received at the limit: not before it');
      assert.deepEqual(keys(await store.claim({ ...sweep, route: 'r2', receivedBefore: T0 + 11 })), ['m2 b@y.test']);
      assert.deepEqual(keys(await store.claim({ ...sweep, receivedBefore: T0 + 15 })), ['m1 a@x.test'], 'not due, but too old');
      assert.deepEqual(await store.claim({ ...sweep, receivedBefore: T0 + 15 }), []);
    });

    it('hold keeps queued deliveries from being claimed; release queues them again, due now', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@y.test'], T0), { 'a@x.test': 'r1', 'b@y.test': 'r2' });
      await store.put(mail('m2', ['c@x.test'], T0 + 1), via('r1', ['c@x.test']));
      assert.equal(await store.hold('m1'), 2);
      assert.equal(await store.hold('m1'), 0, 'already held');
      assert.equal(await store.hold('nope'), 0);

      assert.deepEqual((await store.getMessage('m1'))?.deliveries.map((d) => d.state), ['held', 'held']);
      assert.ok(await bodyOf(store, 'm1'), 'a held message keeps its body');
      assert.deepEqual(await store.stats(), { ...EMPTY, queued: { r1: 1 }, held: 2, messages: 2, oldestQueuedAt: T0 + 1 });
      assert.deepEqual(await store.routes(), ['r1']);
      assert.equal(await store.nextDue('r2'), null);
      assert.deepEqual((await store.list({ state: 'held' })).items.map((i) => i.message.id), ['m1']);
      // Each claim leases m2 for 1 ms; the next one comes 1 ms later.
      const asks = [{}, { ignoreSchedule: true }, { receivedBefore: T0 + 99 * MIN }, { route: 'r2', ignoreSchedule: true }];
      for (const [i, extra] of asks.entries()) {
        const got = await store.claim({ now: T0 + 99 * MIN + i, leaseMs: 1, owner: 'w', limit: 10, ...extra });
        assert.deepEqual(keys(got), 'route' in extra ? [] : ['m2 c@x.test'], JSON.stringify(extra));
      }

      const releasedAt = T0 + 100 * MIN;
      assert.equal(await store.release('m1', releasedAt), 2);
      assert.equal(await store.release('m1', releasedAt), 0, 'nothing held any more');
      assert.equal(await store.release('nope', releasedAt), 0);
      assert.deepEqual(
        (await store.getMessage('m1'))?.deliveries.map((d) => [d.state, d.nextAttemptAt]),
        [
          ['queued', releasedAt],
          ['queued', releasedAt],
        ],
      );
      assert.deepEqual(keys(await store.claim({ route: 'r2', now: releasedAt, leaseMs: MIN, owner: 'w', limit: 10 })), ['m1 b@y.test']);
    });

    it('hold does not touch final deliveries, and an in-flight delivery that was held keeps its outcome', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test', 'c@x.test'], T0), via('r1', ['a@x.test', 'b@x.test', 'c@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      await store.settle('m1', 'w1', [{ recipient: 'c@x.test', result: 'failed', reply: '550' }], T0 + 1);
      // The administrator holds the message while w1 is still talking to the next hop.
      assert.equal(await store.hold('m1'), 2);
      await store.settle(
        'm1',
        'w1',
        [
          { recipient: 'a@x.test', result: 'delivered', reply: '250 ok' },
          { recipient: 'b@x.test', result: 'deferred', reply: '451 later', nextAttemptAt: T0 + MIN },
        ],
        T0 + 2,
      );
      const got = await store.getMessage('m1');
      assert.deepEqual(
        got?.deliveries.map((d) => [d.recipient, d.state, d.attempts, d.lastReply]),
        [
          ['a@x.test', 'delivered', 1, '250 ok'],
          ['b@x.test', 'held', 1, '451 later'],
          ['c@x.test', 'failed', 1, '550'],
        ],
        'a mail already delivered is recorded (not sent twice after release); a deferred one stays held',
      );
      assert.ok(await bodyOf(store, 'm1'), 'b@x.test is held: the body stays');
      await assertNothingClaimable(store, T0 + 99 * MIN);
      assert.equal(await store.release('m1', T0 + 3), 1);
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + 3, leaseMs: MIN, owner: 'w2', limit: 10 })), ['m1 b@x.test']);
    });

    it('retryNow makes queued deliveries due now and drops their lease; held and final ones are left alone', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test', 'c@x.test'], T0), via('r1', ['a@x.test', 'b@x.test', 'c@x.test']));
      await store.put(mail('m2', ['d@x.test'], T0), via('r1', ['d@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: 10 * MIN, owner: 'w1', limit: 10 });
      await store.settle(
        'm1',
        'w1',
        [
          { recipient: 'a@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 60 * MIN },
          { recipient: 'b@x.test', result: 'failed', reply: '550' },
        ],
        T0 + 1,
      );
      await store.settle('m2', 'w1', [{ recipient: 'd@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 60 * MIN }], T0 + 1);
      await store.hold('m2');
      // c@x.test is still leased by w1 until T0 + 10 min.
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + 2, leaseMs: MIN, owner: 'w2', limit: 10 }), []);

      assert.equal(await store.retryNow('m1', T0 + 2), 2);
      assert.equal(await store.retryNow('m2', T0 + 2), 0, 'held deliveries are not made due');
      assert.equal(await store.retryNow('nope', T0 + 2), 0);
      const got = await store.getMessage('m1');
      assert.deepEqual(
        got?.deliveries.map((d) => [d.recipient, d.state, d.nextAttemptAt]),
        [
          ['a@x.test', 'queued', T0 + 2],
          ['b@x.test', 'failed', T0],
          ['c@x.test', 'queued', T0 + 2],
        ],
      );
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + 2, leaseMs: MIN, owner: 'w2', limit: 10 })), ['m1 a@x.test', 'm1 c@x.test']);
      assert.equal((await store.getMessage('m2'))?.deliveries[0]?.state, 'held');
    });

    it('remove deletes the message, its body, deliveries and attempts', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.put(mail('m2', ['c@x.test'], T0 + 1), via('r1', ['c@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + MIN }], T0 + 1);

      assert.equal(await store.remove('m1'), true);
      assert.equal(await store.getMessage('m1'), null);
      await assert.rejects(store.readBody('m1'), /m1/);
      assert.deepEqual(await store.stats(), { ...EMPTY, queued: { r1: 1 }, messages: 1, oldestQueuedAt: T0 + 1 });
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + 99 * MIN, ignoreSchedule: true, leaseMs: MIN, owner: 'w2', limit: 10 })), ['m2 c@x.test']);
      assert.equal(await store.remove('m1'), false);
      assert.equal(await store.remove('nope'), false);

      // Nothing of m1 is left behind: the same id is new again, with no deliveries or attempts of the old one.
      assert.equal(await store.put(mail('m1', ['z@x.test'], T0 + 5), via('r9', ['z@x.test'])), true);
      assert.deepEqual(await store.getMessage('m1'), { message: info('m1', ['z@x.test'], T0 + 5), deliveries: [untried('m1', 'z@x.test', 'r9', T0 + 5)], attempts: [] });
    });

    it('takeDelayWarnings marks old messages with queued work once, and returns them with their queued deliveries', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.put(mail('m2', ['b@x.test', 'c@x.test'], T0 + 1), via('r1', ['b@x.test', 'c@x.test']));
      await store.put(mail('m3', ['d@x.test'], T0 + 2), via('r1', ['d@x.test']));
      await store.put(mail('m4', ['e@x.test'], T0 + 3), via('r1', ['e@x.test']));
      await store.put(mail('m5', ['f@x.test'], T0 + 100), via('r1', ['f@x.test']));
      await store.claim({ route: 'r1', now: T0 + 3, leaseMs: MIN, owner: 'w', limit: 10 });
      await store.settle('m2', 'w', [{ recipient: 'b@x.test', result: 'delivered', reply: '250' }], T0 + 4);
      await store.settle('m4', 'w', [{ recipient: 'e@x.test', result: 'failed', reply: '550' }], T0 + 4);
      await store.hold('m3');

      const now = T0 + 60 * MIN;
      const first = await store.takeDelayWarnings(T0 + 50, now, 1);
      const second = await store.takeDelayWarnings(T0 + 50, now, 10);
      assert.equal(first.length, 1, 'at most limit');
      const taken = [...first, ...second].sort((x, y) => x.message.id.localeCompare(y.message.id));
      assert.deepEqual(
        taken.map((t) => [t.message.id, t.message.delayWarnedAt, t.deliveries.map((d) => `${d.recipient} ${d.state}`)]),
        [
          ['m1', now, ['a@x.test queued']],
          ['m2', now, ['c@x.test queued']],
        ],
        'm3 is held, m4 failed, m5 too young; m2 without its delivered recipient',
      );
      assert.equal((await store.getMessage('m1'))?.message.delayWarnedAt, now);
      assert.equal((await store.getMessage('m5'))?.message.delayWarnedAt, null);
      assert.deepEqual(await store.takeDelayWarnings(T0 + 50, now + 1, 10), [], 'each message is warned once');
      assert.deepEqual((await store.takeDelayWarnings(T0 + 101, now + 2, 10)).map((t) => t.message.id), ['m5']);
    });

    it('takeDelayWarnings from several handles at the same time gives each message to one of them', async () => {
      const handles = [store, await another(), await another()];
      const all = new Set<string>();
      for (let i = 0; i < 24; i++) {
        await store.put(mail(`m${i}`, [`u${i}@x.test`], T0 + i), via('r1', [`u${i}@x.test`]));
        all.add(`m${i}`);
      }
      const results = await Promise.all(
        handles.flatMap((h, n) => Array.from({ length: 6 }, () => h.takeDelayWarnings(T0 + 1000, T0 + 2000 + n, 2))),
      );
      const taken = results.flat().map((t) => t.message.id);
      assert.equal(new Set(taken).size, taken.length, 'a message was warned twice');
      assert.deepEqual(new Set(taken), all);
    });

    it('purge removes messages whose deliveries are all final and settled before the time, with their records', async () => {
      const settle = async (id: string, outcomes: Parameters<Store['settle']>[2], at: number) => {
        await store.claim({ route: 'r1', now: at, ignoreSchedule: true, leaseMs: MIN, owner: 'w', limit: 100 });
        await store.settle(id, 'w', outcomes, at);
      };
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.put(mail('m2', ['c@x.test', 'd@x.test'], T0), via('r1', ['c@x.test', 'd@x.test']));
      await store.put(mail('m3', ['e@x.test'], T0), via('r1', ['e@x.test']));
      await store.put(mail('m4', ['f@x.test'], T0), via('r1', ['f@x.test']));
      await settle('m1', [{ recipient: 'a@x.test', result: 'delivered', reply: '250' }], T0 + 10);
      await settle('m1', [{ recipient: 'b@x.test', result: 'failed', reply: '550' }], T0 + 20);
      await settle('m2', [{ recipient: 'c@x.test', result: 'delivered', reply: '250' }], T0 + 10);
      await settle('m2', [{ recipient: 'd@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 99 * MIN }], T0 + 10);
      await settle('m3', [{ recipient: 'e@x.test', result: 'delivered', reply: '250' }], T0 + 30);
      await settle('m4', [{ recipient: 'f@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 99 * MIN }], T0 + 10);
      await store.hold('m4');

      assert.equal(await store.purge(T0 + 20), 0, "m1's last delivery settled at the time, not before it");
      assert.equal(await store.purge(T0 + 21), 1);
      assert.equal(await store.getMessage('m1'), null);
      assert.deepEqual(await store.stats(), { ...EMPTY, queued: { r1: 1 }, held: 1, delivered: 2, messages: 2, oldestQueuedAt: T0 });

      assert.equal(await store.purge(T0 + 365 * 24 * 60 * MIN), 1, 'm3 only: m2 is still queued for d, m4 is held');
      assert.equal(await store.getMessage('m3'), null);
      assert.equal((await store.getMessage('m2'))?.deliveries.length, 2);
      assert.equal((await store.getMessage('m4'))?.deliveries[0]?.state, 'held');
      assert.deepEqual(await store.stats(), { ...EMPTY, queued: { r1: 1 }, held: 1, delivered: 1, messages: 2, oldestQueuedAt: T0 });
      assert.equal(await store.purge(T0 + 365 * 24 * 60 * MIN), 0);

      // Nothing of m1 is left behind.
      assert.equal(await store.put(mail('m1', ['z@x.test'], T0 + 5), via('r9', ['z@x.test'])), true);
      assert.deepEqual(await store.getMessage('m1'), { message: info('m1', ['z@x.test'], T0 + 5), deliveries: [untried('m1', 'z@x.test', 'r9', T0 + 5)], attempts: [] });
    });

    it('list filters by state, domain, sender, recipient and age; newest first, with a total and paging', async () => {
      const put = async (id: string, from: string, rcpts: string[], at: number) => {
        const m = mail(id, rcpts, at);
        m.envelope.mailFrom = from;
        await store.put(m, via('r1', rcpts));
      };
      await put('L1', 'Alice@Origin.test', ['u1@x.test', 'u2@Y.test'], T0 + 1);
      await put('L2', '', ['bob@sub.x.test'], T0 + 2);
      await put('L3', 'carol@other.test', ['U3@X.TEST'], T0 + 3);
      await put('L4', 'dave@origin.test', ['v@z.test'], T0 + 4);
      await store.hold('L2');
      await store.claim({ route: 'r1', now: T0 + 4, leaseMs: MIN, owner: 'w', limit: 10 });
      await store.settle('L3', 'w', [{ recipient: 'U3@X.TEST', result: 'failed', reply: '550' }], T0 + 5);
      await store.settle('L4', 'w', [{ recipient: 'v@z.test', result: 'delivered', reply: '250' }], T0 + 5);

      const ids = async (filter: Parameters<Store['list']>[0]) => {
        const { total, items } = await store.list(filter);
        return { total, ids: items.map((i) => i.message.id) };
      };
      const all = await store.list({});
      assert.deepEqual(all.items.map((i) => i.message.id), ['L4', 'L3', 'L2', 'L1']);
      assert.equal(all.total, 4);
      assert.deepEqual(all.items[3], { message: { ...info('L1', ['u1@x.test', 'u2@Y.test'], T0 + 1), mailFrom: 'Alice@Origin.test', envelope: { mailFrom: 'Alice@Origin.test', rcptTo: ['u1@x.test', 'u2@Y.test'] } }, deliveries: (await store.getMessage('L1'))?.deliveries });
      assert.deepEqual(all.items[0]?.deliveries.map((d) => d.state), ['delivered'], 'final deliveries are listed too');

      assert.deepEqual(await ids({ state: 'queued' }), { total: 1, ids: ['L1'] });
      assert.deepEqual(await ids({ state: 'held' }), { total: 1, ids: ['L2'] });
      assert.deepEqual(await ids({ state: 'failed' }), { total: 1, ids: ['L3'] });
      assert.deepEqual(await ids({ state: 'delivered' }), { total: 1, ids: ['L4'] });
      assert.deepEqual(await ids({ domain: 'x.test' }), { total: 2, ids: ['L3', 'L1'] }, 'exact domain, any case; not sub.x.test');
      assert.deepEqual(await ids({ domain: 'Y.TEST' }), { total: 1, ids: ['L1'] });
      assert.deepEqual(await ids({ domain: 'sub.x.test' }), { total: 1, ids: ['L2'] });
      assert.deepEqual(await ids({ domain: 'test' }), { total: 0, ids: [] });
      assert.deepEqual(await ids({ sender: 'ORIGIN.test' }), { total: 2, ids: ['L4', 'L1'] });
      assert.deepEqual(await ids({ sender: '<>' }), { total: 1, ids: ['L2'] });
      assert.deepEqual(await ids({ recipient: 'u3@x' }), { total: 1, ids: ['L3'] });
      assert.deepEqual(await ids({ recipient: 'U2@y.' }), { total: 1, ids: ['L1'] });
      assert.deepEqual(await ids({ receivedBefore: T0 + 2 }), { total: 2, ids: ['L2', 'L1'] }, 'at or before');
      assert.deepEqual(await ids({ domain: 'x.test', state: 'failed' }), { total: 1, ids: ['L3'] });
      assert.deepEqual(await ids({ sender: 'origin', receivedBefore: T0 + 3 }), { total: 1, ids: ['L1'] });

      assert.deepEqual(await ids({ limit: 2 }), { total: 4, ids: ['L4', 'L3'] });
      assert.deepEqual(await ids({ limit: 2, offset: 2 }), { total: 4, ids: ['L2', 'L1'] });
      assert.deepEqual(await ids({ limit: 2, offset: 4 }), { total: 4, ids: [] });
    });

    it('list matches state, domain and recipient on one delivery; takes several states; sorts oldest first', async () => {
      await store.put(mail('D1', ['a@x.test', 'b@y.test'], T0 + 1), via('r1', ['a@x.test', 'b@y.test']));
      await store.put(mail('D2', ['c@x.test'], T0 + 2), via('r1', ['c@x.test']));
      await store.put(mail('D3', ['d@y.test'], T0 + 3), via('r1', ['d@y.test']));
      await store.claim({ route: 'r1', now: T0 + 3, leaseMs: MIN, owner: 'w', limit: 10 });
      // D1: delivered to x.test, still queued for y.test. D2 held. D3 failed.
      await store.settle('D1', 'w', [{ recipient: 'a@x.test', result: 'delivered', reply: '250' }], T0 + 4);
      await store.settle('D3', 'w', [{ recipient: 'd@y.test', result: 'failed', reply: '550' }], T0 + 4);
      await store.hold('D2');
      const ids = async (filter: Parameters<Store['list']>[0]) => (await store.list(filter)).items.map((i) => i.message.id);

      assert.deepEqual(await ids({ domain: 'x.test', state: 'queued' }), [], 'D1 is queued only for y.test');
      assert.deepEqual(await ids({ domain: 'y.test', state: 'queued' }), ['D1']);
      assert.deepEqual(await ids({ domain: 'x.test', state: 'delivered' }), ['D1']);
      assert.deepEqual(await ids({ recipient: 'a@', state: 'queued' }), []);
      assert.deepEqual(await ids({ recipient: 'b@', state: 'queued', domain: 'y.test' }), ['D1']);
      assert.deepEqual(await ids({ state: ['queued', 'held'] }), ['D2', 'D1']);
      assert.deepEqual(await ids({ state: ['queued', 'held'], domain: 'x.test' }), ['D2'], 'what is waiting for x.test');
      assert.equal((await store.list({ state: ['queued', 'held'], domain: 'x.test' })).total, 1);
      assert.deepEqual(await ids({ state: [] }), [], 'no state at all matches nothing');
      assert.deepEqual(await ids({ order: 'oldest' }), ['D1', 'D2', 'D3']);
      assert.deepEqual(await ids({ order: 'newest' }), ['D3', 'D2', 'D1']);
      assert.deepEqual(await ids({ order: 'oldest', limit: 1, offset: 1 }), ['D2']);
    });

    it('bulk holds, releases, retries and removes many messages with the rules of the one-message operations', async () => {
      await store.put(mail('B1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.put(mail('B2', ['c@x.test'], T0 + 1), via('r1', ['c@x.test']));
      await store.put(mail('B3', ['d@x.test'], T0 + 2), via('r1', ['d@x.test']));
      await store.claim({ route: 'r1', now: T0 + 2, leaseMs: 10 * MIN, owner: 'w', limit: 10 });
      await store.settle('B1', 'w', [{ recipient: 'a@x.test', result: 'delivered', reply: '250' }], T0 + 3);
      await store.settle('B3', 'w', [{ recipient: 'd@x.test', result: 'deferred', reply: '451', nextAttemptAt: T0 + 60 * MIN }], T0 + 3);

      assert.deepEqual(await store.bulk('hold', ['B1', 'nope', 'B3'], T0 + 4), { messages: ['B1', 'B3'], deliveries: 2 }, 'the delivered recipient is not held');
      assert.deepEqual(await store.bulk('hold', ['B1', 'B3'], T0 + 4), { messages: [], deliveries: 0 });
      assert.deepEqual((await store.getMessage('B1'))?.deliveries.map((d) => d.state), ['delivered', 'held']);
      assert.deepEqual(await store.bulk('retry', ['B1', 'B2', 'B3'], T0 + 5), { messages: ['B2'], deliveries: 1 }, 'held mail is not retried');
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + 5, leaseMs: MIN, owner: 'w2', limit: 10 })), ['B2 c@x.test'], 'retry dropped the lease and made it due');
      assert.deepEqual(await store.bulk('release', ['B3', 'B1'], T0 + 6), { messages: ['B3', 'B1'], deliveries: 2 });
      assert.deepEqual(
        (await store.getMessage('B3'))?.deliveries.map((d) => [d.state, d.nextAttemptAt]),
        [['queued', T0 + 6]],
        'released: due now',
      );
      assert.deepEqual(await store.bulk('remove', ['B2', 'nope', 'B1'], T0 + 7), { messages: ['B2', 'B1'], deliveries: 3 });
      assert.equal(await store.getMessage('B1'), null);
      await assert.rejects(store.readBody('B2'), /B2/);
      assert.deepEqual(await store.bulk('remove', ['B2'], T0 + 7), { messages: [], deliveries: 0 });
      assert.deepEqual(await store.bulk('hold', [], T0 + 7), { messages: [], deliveries: 0 });
      assert.deepEqual((await store.list({})).items.map((i) => i.message.id), ['B3']);
    });

    it('bulk handles more messages than one batch', async () => {
      const many = Array.from({ length: 1203 }, (_, i) => `N${String(i).padStart(5, '0')}`);
      for (const [i, id] of many.entries()) await store.put(mail(id, ['a@x.test'], T0 + i), via('r1', ['a@x.test']));
      const held = await store.bulk('hold', many, T0 + 9999);
      assert.equal(held.messages.length, 1203);
      assert.equal(held.deliveries, 1203);
      assert.equal((await store.stats()).held, 1203);
    });

    it('activity counts messages received and deliveries settled since a time', async () => {
      await store.put(mail('A1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.put(mail('A2', ['c@x.test'], T0 + 10 * MIN), via('r1', ['c@x.test']));
      await store.claim({ route: 'r1', now: T0 + 10 * MIN, leaseMs: MIN, owner: 'w', limit: 10 });
      await store.settle('A1', 'w', [{ recipient: 'a@x.test', result: 'delivered', reply: '250' }, { recipient: 'b@x.test', result: 'failed', reply: '550' }], T0 + 10 * MIN);
      await store.settle('A2', 'w', [{ recipient: 'c@x.test', result: 'delivered', reply: '250' }], T0 + 20 * MIN);
      assert.deepEqual(await store.activity(T0), { received: 2, delivered: 2, failed: 1 });
      assert.deepEqual(await store.activity(T0 + 10 * MIN), { received: 1, delivered: 2, failed: 1 }, 'at or after');
      assert.deepEqual(await store.activity(T0 + 15 * MIN), { received: 0, delivered: 1, failed: 0 });
      assert.deepEqual(await store.activity(T0 + 21 * MIN), { received: 0, delivered: 0, failed: 0 });
    });

    it('list returns 50 messages unless asked for more', async () => {
      for (let i = 0; i < 52; i++) await store.put(mail(`m${String(i).padStart(2, '0')}`, ['a@x.test'], T0 + i), via('r1', ['a@x.test']));
      const page = await store.list({});
      assert.equal(page.total, 52);
      assert.equal(page.items.length, 50);
      assert.equal(page.items[0]?.message.id, 'm51');
      assert.equal((await store.list({ limit: 100 })).items.length, 52);
    });

    it('the cache returns a value until it expires; put overwrites value and expiry; it survives reopening', async () => {
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0), null);
      await store.cachePut('rcpt:a@x.test', '250', T0 + MIN);
      await store.cachePut('rcpt:b@x.test', '550 5.1.1', T0 + 10 * MIN);
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0), '250');
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0 + MIN - 1), '250');
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0 + MIN), null, 'expired at expiresAt');
      assert.equal(await store.cacheGet('rcpt:A@x.test', T0), null, 'keys are exact');

      await store.cachePut('rcpt:a@x.test', '550 5.1.1', T0 + 2 * MIN);
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0 + MIN), '550 5.1.1');
      await store.cachePut('rcpt:a@x.test', '250', T0 + 10);
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0 + MIN), null, 'the shorter expiry replaced the longer one');

      await store.close();
      store = await backend.open();
      assert.equal(await store.cacheGet('rcpt:b@x.test', T0 + 5 * MIN), '550 5.1.1');
      assert.equal(await store.cacheGet('rcpt:a@x.test', T0), '250');
    });

    it('data survives closing and reopening the store', async () => {
      const body = Buffer.from('Subject: durable\r\n\r\n\xe9t\xe9\r\n.\r\n', 'latin1');
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0, body), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: 10 * MIN, owner: 'w1', limit: 10 });
      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'deferred', reply: '451 x', nextAttemptAt: T0 + MIN }], T0 + 1);
      const before = await store.getMessage('m1');
      assert.ok(store.ready());
      await store.close();
      assert.equal(store.ready(), false);

      store = await backend.open();
      assert.ok(store.ready());
      assert.deepEqual(await store.getMessage('m1'), before);
      assert.ok((await bodyOf(store, 'm1')).equals(body));
      // b's lease survived too.
      assert.deepEqual(keys(await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w2', limit: 10 })), ['m1 a@x.test']);
    });
  });
}

// ---- SQLite: always ----
contract('sqlite', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
  const path = join(dir, 'nested', 'store.db'); // the parent directory does not exist yet
  return {
    open: () => openSqliteStore(path),
    dispose: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

// The same file through the store thread `npm start` and the spool use (store-thread.ts): every call,
// its result or its error, and every body crosses between threads.
contract('sqlite in its thread', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
  const path = join(dir, 'nested', 'store.db');
  return {
    open: () => openStoreThread(path, createLogger('test', 'silent')),
    dispose: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

describe('sqlite store: in its thread', () => {
  const log = createLogger('test', 'silent');

  it('moves a large body to its thread instead of copying it, and keeps it intact', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const store = await openStoreThread(join(dir, 'store.db'), log);
      const body = Buffer.allocUnsafeSlow(2 * 1024 * 1024); // a buffer of its own, as a received message's
      randomFillSync(body);
      const copy = Buffer.from(body);
      const put = store.put(mail('big', ['a@x.test'], T0, body), via('r1', ['a@x.test']));
      assert.equal(body.length, 0, 'the caller no longer holds the bytes: they were moved, not copied');
      assert.equal(await put, true);
      assert.ok((await bodyOf(store, 'big')).equals(copy));
      const small = Buffer.from('Subject: s\r\n\r\nsmall\r\n');
      await store.put(mail('small', ['a@x.test'], T0, small), via('r1', ['a@x.test']));
      assert.equal(small.toString(), 'Subject: s\r\n\r\nsmall\r\n', 'a small body is copied and stays the caller\'s');
      // A slice of a larger buffer is copied (others may still read the rest of it), unless its
      // maker says the buffer is its alone (ingress receives into a buffer with room in front).
      const slab = randomBytes(3 * 1024 * 1024);
      const slice = slab.subarray(1000, 1000 + 2 * 1024 * 1024);
      const sliceCopy = Buffer.from(slice);
      await store.put(mail('slice', ['a@x.test'], T0, slice), via('r1', ['a@x.test']));
      assert.equal(slice.length, 2 * 1024 * 1024, 'copied: the buffer it is cut from is left alone');
      const marked = movableBody(Buffer.from(slab).subarray(1000));
      const markedCopy = Buffer.from(marked);
      await store.put(mail('marked', ['a@x.test'], T0, marked), via('r1', ['a@x.test']));
      assert.equal(marked.length, 0, 'moved');
      assert.ok((await bodyOf(store, 'slice')).equals(sliceCopy));
      assert.ok((await bodyOf(store, 'marked')).equals(markedCopy));
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a reader that stops early leaves the store working, and close ends the thread', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const store = await openStoreThread(join(dir, 'store.db'), log);
      await store.put(mail('big', ['a@x.test'], T0, randomBytes(5 * 1024 * 1024)), via('r1', ['a@x.test']));
      const body = await store.readBody('big');
      const [first] = (await body.take(1).toArray()) as Buffer[];
      assert.equal(first?.length, 1024 * 1024, 'the first part of 1 MiB');
      assert.ok(body.destroyed);
      assert.equal((await store.stats()).messages, 1);
      await store.close();
      assert.equal(store.ready(), false);
      await assert.rejects(store.stats(), /closed/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a file that is no backupmx store is refused in one line naming DATA_DIR', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const path = join(dir, 'store.db');
      const old = new DatabaseSync(path);
      old.exec('CREATE TABLE messages (id TEXT PRIMARY KEY)');
      old.close();
      await assert.rejects(openStoreThread(path, log), (err: Error) => err instanceof ConfigError && err.message.startsWith(`DATA_DIR: ${path}: not a backupmx store`));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sqlite store: separate processes', () => {
  it('processes opening a new file at the same moment all open it (its schema is never seen half made)', async () => {
    const moduleUrl = new URL('../shared/src/store/sqlite-store.ts', import.meta.url).href;
    for (let round = 0; round < 6; round++) {
      const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
      try {
        const path = join(dir, 'store.db');
        // Each process loads the store, then all open the file at once (compose starts the spool, the
        // deliverers and ingress together on one new SQLite volume).
        const opener = `
          const { openSqliteStore } = await import(${JSON.stringify(moduleUrl)});
          process.stdout.write('ready\\n');
          await new Promise((resolve) => process.stdin.once('data', resolve));
          process.stdin.destroy();
          try {
            const store = await openSqliteStore(${JSON.stringify(path)});
            await store.close();
            process.stdout.write('opened\\n');
          } catch (error) {
            process.stdout.write('failed: ' + error.message + '\\n');
          }
        `;
        const children = Array.from({ length: 6 }, () => spawnModule(opener, dir, { stdio: ['pipe', 'pipe', 'inherit'] }) as ChildProcessWithoutNullStreams);
        const outputs = children.map((child) => {
          let out = '';
          const ready = new Promise<void>((resolve) => child.stdout.on('data', (c: Buffer) => ((out += c.toString()), out.startsWith('ready\n') && resolve())));
          const done = new Promise<string>((resolve) => child.on('close', () => resolve(out.replace('ready\n', '').trim())));
          return { ready, done };
        });
        await Promise.all(outputs.map((o) => o.ready));
        for (const child of children) child.stdin.write('go\n');
        assert.deepEqual(await Promise.all(outputs.map((o) => o.done)), Array(6).fill('opened'), `round ${round}`);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  });

  it('deliverer processes draining one file at the same time never claim the same delivery', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const path = join(dir, 'store.db');
      const setup = await openSqliteStore(path);
      const all = new Set<string>();
      for (let i = 0; i < 100; i++) {
        const rcpts = [`u${i}a@x.test`, `u${i}b@x.test`, `u${i}c@x.test`];
        await setup.put(mail(`m${i}`, rcpts, Date.now()), via('r1', rcpts));
        for (const r of rcpts) all.add(`m${i} ${r}`);
      }
      await setup.close();

      const moduleUrl = new URL('../shared/src/store/sqlite-store.ts', import.meta.url).href;
      const worker = `
        const { openSqliteStore } = await import(${JSON.stringify(moduleUrl)});
        const store = await openSqliteStore(${JSON.stringify(path)});
        const owner = 'p' + process.pid;
        const got = [];
        // Start barrier: all processes begin claiming together.
        process.stdout.write('ready\\n');
        await new Promise((resolve) => process.stdin.once('data', resolve));
        process.stdin.destroy();
        for (;;) {
          const claimed = await store.claim({ route: 'r1', now: Date.now(), leaseMs: 600000, owner, limit: 1 });
          if (claimed.length === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 2)); // the SMTP transaction
          for (const c of claimed) {
            for (const d of c.deliveries) got.push(d.messageId + ' ' + d.recipient);
            await store.settle(c.message.id, owner,
              c.deliveries.map((d) => ({ recipient: d.recipient, result: 'delivered', reply: '250 ok' })), Date.now());
          }
        }
        await store.close();
        process.stdout.write(JSON.stringify(got) + '\\n');
      `;
      const children = Array.from({ length: 4 }, () => {
        const child = spawnModule(worker, dir, { stdio: ['pipe', 'pipe', 'pipe'] }) as ChildProcessWithoutNullStreams;
        let out = '';
        let err = '';
        child.stderr.on('data', (c: Buffer) => (err += c.toString()));
        const ready = new Promise<void>((resolve, reject) => {
          child.stdout.on('data', (c: Buffer) => {
            out += c.toString();
            if (out.startsWith('ready\n')) resolve();
          });
          child.on('close', (code) => reject(new Error(`worker exited ${code} before ready: ${err}`)));
        });
        const done = new Promise<string[]>((resolve, reject) => {
          child.on('error', reject);
          child.on('close', (code) =>
            code === 0 ? resolve(JSON.parse(out.slice('ready\n'.length)) as string[]) : reject(new Error(`worker exited ${code}: ${err}`)),
          );
        });
        return { child, ready, done };
      });
      await Promise.all(children.map((c) => c.ready));
      for (const c of children) c.child.stdin.write('go\n');
      const results = await Promise.all(children.map((c) => c.done));
      const claimed = results.flat();
      assert.equal(new Set(claimed).size, claimed.length, 'a delivery was claimed by two processes');
      assert.deepEqual(new Set(claimed), all);

      const after = await openSqliteStore(path);
      assert.deepEqual(await after.stats(), { queued: {}, held: 0, delivered: all.size, failed: 0, messages: 0, oldestQueuedAt: null });
      await after.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sqlite store: file format', () => {
  it('refuses a file that is no backupmx store, naming the file, and leaves it alone', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const path = join(dir, 'store.db');
      const old = new DatabaseSync(path);
      old.exec('CREATE TABLE messages (id TEXT PRIMARY KEY, mail_from TEXT NOT NULL, recipients TEXT NOT NULL, size INTEGER NOT NULL, received_at INTEGER NOT NULL)');
      old.exec(`INSERT INTO messages VALUES ('m1', 'a@b', '[]', 1, 1)`);
      old.close();
      await assert.rejects(openSqliteStore(path), (err: Error) => err.message.startsWith(`${path}: not a backupmx store`));
      const check = new DatabaseSync(path);
      assert.deepEqual({ ...check.prepare('SELECT id FROM messages').get() }, { id: 'm1' });
      check.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps a large body in parts of 1 MiB, reads it back part by part, and removes every part when delivered', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const path = join(dir, 'store.db');
      const store = await openSqliteStore(path);
      const body = randomBytes(5 * 1024 * 1024 + 3);
      await store.put(mail('big', ['a@x.test'], T0, body), via('r1', ['a@x.test']));
      const file = new DatabaseSync(path);
      const parts = () => (file.prepare(`SELECT COUNT(*) AS n, MAX(length(part)) AS largest FROM body_parts WHERE message_id = 'big'`).get() as { n: number; largest: number | null });
      assert.deepEqual({ ...parts() }, { n: 6, largest: 1024 * 1024 }, 'no row holds the whole body');
      const chunks: Buffer[] = [];
      for await (const chunk of await store.readBody('big')) chunks.push(chunk as Buffer);
      assert.ok(chunks.length >= 6 && chunks.every((chunk) => chunk.length <= 1024 * 1024), 'streamed a part at a time');
      assert.ok(Buffer.concat(chunks).equals(body));
      const [claimed] = await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 1 });
      assert.ok(claimed);
      await store.settle('big', 'w1', [{ recipient: 'a@x.test', result: 'delivered', reply: '250 ok' }], T0 + 1);
      assert.equal(parts().n, 0, 'the parts are gone with the body');
      await assert.rejects(store.readBody('big'), /big/);
      file.close();
      await store.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('opens its own file again and again (the schema is created once)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'backupmx-store-'));
    try {
      const path = join(dir, 'store.db');
      const [a, b] = await Promise.all([openSqliteStore(path), openSqliteStore(path)]);
      await a.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await a.close();
      const c = await openSqliteStore(path);
      assert.equal((await b.getMessage('m1'))?.message.id, 'm1');
      assert.equal((await c.stats()).messages, 1);
      await b.close();
      await c.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---- MongoDB: only where a server is given ----
const mongoUrl = process.env['MONGODB_URL'];
if (mongoUrl) {
  const mod = (await import(new URL('../shared/src/store/mongo-store.ts', import.meta.url).href)) as {
    openMongoStore(url: string, log: Logger): Promise<Store>;
  };
  const log = createLogger('test', 'silent');
  let n = 0;
  contract('mongo', async () => {
    // A database of its own per test: replace the path of the URL with a fresh database name.
    const db = `backupmx_contract_${process.pid}_${Date.now()}_${n++}`;
    const url = mongoUrl.replace(/^(mongodb(?:\+srv)?:\/\/[^/?]+)(\/[^?]*)?/, `$1/${db}`);
    return { open: () => mod.openMongoStore(url, log), dispose: async () => {} };
  });

  const { MongoClient, GridFSBucket, ObjectId } = await import('mongodb');
  describe('mongo store: schema versions', () => {
    const fresh = () => mongoUrl.replace(/^(mongodb(?:\+srv)?:\/\/[^/?]+)(\/[^?]*)?/, `$1/backupmx_schema_${process.pid}_${Date.now()}_${n++}`);

    it('a database written before versioning (schema 1) is migrated at open and its queued mail is delivered', async () => {
      const url = fresh();
      const client = await new MongoClient(url).connect();
      try {
        const db = client.db();
        const bodyId = new ObjectId();
        const upload = new GridFSBucket(db, { bucketName: 'bodies' }).openUploadStreamWithId(bodyId, 'm1', { metadata: { messageId: 'm1' } });
        await new Promise<void>((resolve, reject) => upload.once('finish', () => resolve()).once('error', reject).end(Buffer.from('Subject: m1\r\n\r\nold\r\n')));
        const rcpts = ['a@x.test', 'b@x.test'];
        await db.collection('messages').insertOne({ _id: 'm1' as never, mailFrom: 's@o.test', recipients: rcpts, envelope: JSON.stringify({ mailFrom: 's@o.test', rcptTo: rcpts }), size: 17, receivedAt: T0, trace: {}, delayWarnedAt: null, bodyId, settledAt: null });
        await db.collection('deliveries').insertMany(rcpts.map((recipient, i) => ({ ...untried('m1', recipient, 'r1', T0), i, receivedAt: T0, leaseOwner: null, leaseUntil: null })));
        const store = await mod.openMongoStore(url, log);
        try {
          assert.deepEqual(await db.collection('meta').findOne({ _id: 'schema' as never }, { projection: { _id: 0, version: 1 } }), { version: 2 });
          assert.deepEqual((await db.collection('messages').findOne({ _id: 'm1' as never }))?.['routes'], ['r1', 'r1']);
          const [claimed] = await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
          assert.deepEqual(claimed?.deliveries.map((d) => d.recipient), rcpts);
          assert.deepEqual(await bodyOf(store, 'm1'), Buffer.from('Subject: m1\r\n\r\nold\r\n'));
          await store.settle('m1', 'w1', rcpts.map((recipient) => ({ recipient, result: 'delivered' as const, reply: '250 ok' })), T0 + 1);
          assert.deepEqual((await store.stats()).delivered, 2);
        } finally {
          await store.close();
        }
      } finally {
        await client.db().dropDatabase();
        await client.close();
      }
    });

    it('a database of a newer schema is refused with one line naming MONGODB_URL, and left alone', async () => {
      const url = fresh();
      const client = await new MongoClient(url).connect();
      try {
        await client.db().collection('meta').insertOne({ _id: 'schema' as never, version: 99 });
        await assert.rejects(mod.openMongoStore(url, log), (error: Error) => /^MONGODB_URL: database \S+: store schema 99 is newer than this build's 2\b/.test(error.message));
        assert.equal((await client.db().collection('meta').findOne({ _id: 'schema' as never }))?.['version'], 99);
      } finally {
        await client.db().dropDatabase();
        await client.close();
      }
    });
  });
} else {
  describe('store contract: mongo', () => {
    it.skip('SKIPPED: MongoDB store contract and schema migrations — MONGODB_URL is not set, no MongoDB server runs here', () => {});
  });
}
