/**
 * The store contract: every Store adapter must pass these tests. They run against SQLite always and
 * against MongoDB when MONGODB_URL is set.
 */
import { describe, it, beforeEach, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Store } from '../shared/src/store.ts';
import type { ReceivedMail } from '../shared/src/types.ts';
import { openSqliteStore } from '../shared/src/sqlite-store.ts';

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
      assert.deepEqual(got.message, {
        id: 'm1',
        mailFrom: 'sender@example.org',
        recipients: ['a@x.test', 'b@x.test', 'A@x.test'],
        size: mail('m1', [], T0).body.length,
        receivedAt: T0,
      });
      assert.deepEqual(
        got.deliveries,
        ['a@x.test', 'b@x.test', 'A@x.test'].map((recipient) => ({
          messageId: 'm1',
          recipient,
          route: 'r1',
          state: 'queued',
          attempts: 0,
          nextAttemptAt: T0,
          lastAttemptAt: null,
          lastReply: null,
        })),
      );
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
      await store.put(mail('big', ['a@x.test'], T0, body), via('r1', ['a@x.test']));
      assert.ok((await bodyOf(store, 'big')).equals(body));
    });

    it('getMessage of an unknown id is null; readBody of an unknown id rejects', async () => {
      assert.equal(await store.getMessage('nope'), null);
      await assert.rejects(store.readBody('nope'), Error);
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
      assert.deepEqual(first[0]?.message, {
        id: 'm1',
        mailFrom: 'sender@example.org',
        recipients: ['a1@x.test', 'a2@y.test', 'a3@x.test'],
        size: mail('m1', [], 0).body.length,
        receivedAt: T0 + 1,
      });
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

    it('settle delivered removes the delivery, and the message with its body when none is left', async () => {
      await store.put(mail('m1', ['a@x.test', 'b@x.test'], T0), via('r1', ['a@x.test', 'b@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });

      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'delivered', reply: '250 2.0.0 ok' }], T0 + 1);
      const got = await store.getMessage('m1');
      assert.deepEqual(got?.deliveries.map((d) => d.recipient), ['b@x.test']);
      assert.ok(await bodyOf(store, 'm1'));

      await store.settle('m1', 'w1', [{ recipient: 'b@x.test', result: 'delivered', reply: '250 2.0.0 ok' }], T0 + 2);
      assert.equal(await store.getMessage('m1'), null);
      await assert.rejects(store.readBody('m1'));
      assert.deepEqual(await store.stats(), { queued: {}, failed: 0, messages: 0, oldestQueuedAt: null });
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);
      assert.deepEqual(await store.claim({ route: 'r1', now: T0 + 10 * MIN, ignoreSchedule: true, leaseMs: MIN, owner: 'w2', limit: 10 }), []);
    });

    it('settle deferred queues again at nextAttemptAt; ignoreSchedule claims it early; notAttemptedSince excludes it', async () => {
      await store.put(mail('m1', ['a@x.test'], T0), via('r1', ['a@x.test']));
      await store.claim({ route: 'r1', now: T0, leaseMs: MIN, owner: 'w1', limit: 10 });
      const attemptAt = T0 + 1000;
      const retryAt = T0 + 30 * MIN;
      await store.settle('m1', 'w1', [{ recipient: 'a@x.test', result: 'deferred', reply: '421 4.4.2 busy', nextAttemptAt: retryAt }], attemptAt);

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
      });
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
          { recipient: 'a@x.test', result: 'failed', reply: '550 5.1.1 no such user' },
          { recipient: 'b@x.test', result: 'delivered', reply: '250 ok' },
        ],
        T0 + 5,
      );
      const got = await store.getMessage('m1');
      assert.ok(got, 'a message with a failed delivery is kept');
      assert.deepEqual(got.deliveries, [
        {
          messageId: 'm1',
          recipient: 'a@x.test',
          route: 'r1',
          state: 'failed',
          attempts: 1,
          nextAttemptAt: T0,
          lastAttemptAt: T0 + 5,
          lastReply: '550 5.1.1 no such user',
        },
      ]);
      assert.ok(await bodyOf(store, 'm1'));
      for (const now of [T0 + MIN, T0 + 365 * 24 * 60 * MIN]) {
        assert.deepEqual(await store.claim({ route: 'r1', now, leaseMs: MIN, owner: 'w2', limit: 10 }), []);
        assert.deepEqual(await store.claim({ route: 'r1', now, ignoreSchedule: true, leaseMs: MIN, owner: 'w2', limit: 10 }), []);
      }
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);
      assert.deepEqual(await store.stats(), { queued: {}, failed: 1, messages: 1, oldestQueuedAt: null });
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
      assert.equal(await store.getMessage('m1'), null);
    });

    it('stats, routes and nextDue describe the queue', async () => {
      assert.deepEqual(await store.stats(), { queued: {}, failed: 0, messages: 0, oldestQueuedAt: null });
      assert.deepEqual(await store.routes(), []);
      assert.equal(await store.nextDue('r1'), null);

      await store.put(mail('m1', ['a@x.test', 'b@y.test'], T0 + 10), { 'a@x.test': 'r1', 'b@y.test': 'r2' });
      await store.put(mail('m2', ['c@x.test', 'd@x.test'], T0 + 20), via('r1', ['c@x.test', 'd@x.test']));
      await store.put(mail('m3', ['e@z.test'], T0 + 30), via('r3', ['e@z.test']));

      assert.deepEqual(await store.stats(), { queued: { r1: 3, r2: 1, r3: 1 }, failed: 0, messages: 3, oldestQueuedAt: T0 + 10 });
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

      assert.deepEqual(await store.stats(), { queued: { r1: 2, r3: 1 }, failed: 1, messages: 3, oldestQueuedAt: T0 + 20 });
      assert.deepEqual((await store.routes()).sort(), ['r1', 'r3']);
      assert.equal(await store.nextDue('r2'), null);
      assert.equal(await store.nextDue('r3'), T0 + 99 * MIN);
      // A leased delivery still counts as queued.
      await store.claim({ route: 'r1', now: T0 + MIN, leaseMs: MIN, owner: 'w', limit: 1 });
      assert.deepEqual((await store.stats()).queued, { r1: 2, r3: 1 });
      assert.equal(await store.nextDue('r1'), T0 + 20);
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

describe('sqlite store: separate processes', () => {
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

      const moduleUrl = pathToFileURL(join(import.meta.dirname, '..', 'shared', 'src', 'sqlite-store.ts')).href;
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
        const child = spawn(process.execPath, ['--input-type=module', '-e', worker], { stdio: ['pipe', 'pipe', 'pipe'] });
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
      assert.deepEqual(await after.stats(), { queued: {}, failed: 0, messages: 0, oldestQueuedAt: null });
      await after.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

// ---- MongoDB: only where a server is given ----
const mongoUrl = process.env['MONGODB_URL'];
if (mongoUrl) {
  const mod = (await import(new URL('../shared/src/mongo-store.ts', import.meta.url).href)) as {
    openMongoStore(url: string): Promise<Store>;
  };
  let n = 0;
  contract('mongo', async () => {
    // A database of its own per test: replace the path of the URL with a fresh database name.
    const db = `backupmx_contract_${process.pid}_${Date.now()}_${n++}`;
    const url = mongoUrl.replace(/^(mongodb(?:\+srv)?:\/\/[^/?]+)(\/[^?]*)?/, `$1/${db}`);
    return { open: () => mod.openMongoStore(url), dispose: async () => {} };
  });
} else {
  describe('store contract: mongo', () => {
    it.skip('SKIPPED: MongoDB store contract — MONGODB_URL is not set, no MongoDB server runs here', () => {});
  });
}
