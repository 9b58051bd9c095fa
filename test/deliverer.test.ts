import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { startIngressWithSpool } from './support/in-process.ts';
import { startPrimary } from './support/primary.ts';
import { freePort, waitFor } from './support/util.ts';

/**
 * What happens to each recipient when a real primary answers: 2xx delivered (kept as a record, out
 * of the queue), 4xx deferred and retried on RETRY_SCHEDULE, 5xx failed with the primary's reply kept.
 */
describe('deliverer: per-recipient outcomes and retries', () => {
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  const reject: Record<string, number> = { 'bad@example.test': 550, 'later@example.test': 451 };
  /** The message of the first test, with a failed recipient. */
  let partial = '';

  before(async () => {
    primary = await startPrimary({ reject });
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', PRIMARY: `127.0.0.1:${primary.port}`, RETRY_SCHEDULE: '1s,1h' }, { deliver: true });
  });
  after(async () => {
    await system.close();
    await primary.close();
  });

  async function send(to: string[], subject: string): Promise<string> {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: system.port, secure: false, ignoreTLS: true });
    try {
      // NOTIFY=NEVER: no delivery reports here (they are queued as mail of their own; see
      // delivery-reports.test.ts), so the queue holds only what this test sends.
      const info = await transport.sendMail({ envelope: { from: 'sender@origin.test', to }, raw: `Subject: ${subject}\r\n\r\nbody\r\n`, dsn: { notify: 'NEVER' } });
      return /queued as ([0-9A-Z]+)/.exec(info.response)?.[1] ?? '';
    } finally {
      transport.close();
    }
  }

  it('delivers the accepted recipients in one transaction, fails the 5xx one and defers the 4xx one', async () => {
    const id = await send(['ok1@example.test', 'bad@example.test', 'later@example.test', 'ok2@example.test'], 'partial');
    const delivered = await waitFor('the delivery', () => primary.messages.find((message) => message.raw.includes(`id ${id}`)));
    assert.deepEqual(delivered.to, ['ok1@example.test', 'ok2@example.test']);
    const state = await waitFor('outcomes recorded', async () => {
      const record = await system.store.getMessage(id);
      return record?.deliveries.every((delivery) => delivery.attempts === 1) ? record : null;
    });
    partial = id;
    const byRecipient = Object.fromEntries(state.deliveries.map((delivery) => [delivery.recipient, delivery]));
    const nextHop = `127.0.0.1:${primary.port}`;
    for (const recipient of ['ok1@example.test', 'ok2@example.test']) {
      const delivery = byRecipient[recipient];
      assert.equal(delivery?.state, 'delivered', `${recipient} is recorded as delivered`);
      assert.ok(delivery.settledAt !== null && delivery.settledAt === delivery.lastAttemptAt, `${recipient} has settledAt`);
      assert.match(delivery.lastReply ?? '', /^250 /);
      assert.equal(delivery.lastNextHop, nextHop);
    }
    assert.deepEqual(
      state.attempts.map((attempt) => [attempt.recipient, attempt.result, attempt.nextHop]).sort(),
      [
        ['bad@example.test', 'failed', nextHop],
        ['later@example.test', 'deferred', nextHop],
        ['ok1@example.test', 'delivered', nextHop],
        ['ok2@example.test', 'delivered', nextHop],
      ],
    );
    const stats = await system.store.stats();
    assert.deepEqual([stats.delivered, stats.failed, stats.messages], [2, 1, 1], 'the message still counts: later@ is queued');
    assert.equal(byRecipient['bad@example.test']?.state, 'failed');
    assert.match(byRecipient['bad@example.test']?.lastReply ?? '', /^550 5\.1\.1 no thanks/);
    assert.equal(byRecipient['later@example.test']?.state, 'queued');
    assert.match(byRecipient['later@example.test']?.lastReply ?? '', /^451 4\.2\.1 no thanks/);
    const wait = (byRecipient['later@example.test']?.nextAttemptAt ?? 0) - (byRecipient['later@example.test']?.lastAttemptAt ?? 0);
    assert.equal(wait, 1000, 'the first retry comes after the first RETRY_SCHEDULE step');
  });

  it('retries the deferred recipient on schedule and delivers it once the primary takes it', async () => {
    delete reject['later@example.test'];
    const retried = await waitFor('the retry', () => primary.messages.find((message) => message.to.includes('later@example.test')), 10_000);
    assert.deepEqual(retried.to, ['later@example.test']);
    const failedOnly = await waitFor('nothing left to deliver', async () => {
      const stats = await system.store.stats();
      return stats.failed === 1 && Object.values(stats.queued).every((count) => count === 0) ? stats : null;
    });
    assert.equal(failedOnly.delivered, 3);
    assert.equal(failedOnly.messages, 0, 'a message with only delivered and failed recipients is out of the queue');
    const record = await system.store.getMessage(partial);
    assert.deepEqual(
      record?.deliveries.map((delivery) => [delivery.recipient, delivery.state]),
      [
        ['ok1@example.test', 'delivered'],
        ['bad@example.test', 'failed'],
        ['later@example.test', 'delivered'],
        ['ok2@example.test', 'delivered'],
      ],
      'the failed recipient is kept as a record, with the others',
    );
    assert.match(record?.deliveries[1]?.lastReply ?? '', /^550 5\.1\.1 no thanks/);
    await assert.rejects(system.store.readBody(partial), 'the body is removed once nothing is left to deliver');
  });

  it('flushes deferred mail at once on queue.flush, ignoring the backoff', async () => {
    reject['slow@example.test'] = 452;
    const id = await send(['slow@example.test'], 'flush me');
    await waitFor('first attempt deferred', async () => (await system.store.getMessage(id))?.deliveries[0]?.attempts === 1);
    await waitFor('second attempt deferred (after the 1 s step)', async () => (await system.store.getMessage(id))?.deliveries[0]?.attempts === 2, 10_000);
    const record = await system.store.getMessage(id);
    assert.ok((record?.deliveries[0]?.nextAttemptAt ?? 0) - Date.now() > 3_000_000, 'next retry is an hour away');
    delete reject['slow@example.test'];
    system.broker.publishEvent('queue.flush', {});
    await waitFor('the flushed delivery', () => primary.messages.find((message) => message.raw.includes(`id ${id}`)), 5_000);
    await waitFor('the delivery recorded', async () => (await system.store.getMessage(id))?.deliveries[0]?.state === 'delivered');
    await assert.rejects(system.store.readBody(id), 'the delivered message left the spool: its body is gone');
  });

  it('defers every recipient when the primary cannot be reached, and keeps the message', async () => {
    const closed = await freePort();
    const down = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', PRIMARY: `127.0.0.1:${closed}`, RETRY_SCHEDULE: '1h' }, { deliver: true });
    try {
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port: down.port, secure: false, ignoreTLS: true });
      const info = await transport.sendMail({ envelope: { from: '', to: ['a@example.test', 'b@example.test'] }, raw: 'Subject: x\r\n\r\ny\r\n' });
      transport.close();
      const id = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1] ?? '';
      const record = await waitFor('the failed attempt', async () => {
        const found = await down.store.getMessage(id);
        return found?.deliveries.every((delivery) => delivery.attempts === 1) ? found : null;
      });
      for (const delivery of record.deliveries) {
        assert.equal(delivery.state, 'queued');
        assert.match(delivery.lastReply ?? '', /ECONNREFUSED/);
      }
      assert.equal(record.message.mailFrom, '');
    } finally {
      await down.close();
    }
  });
});

describe('spool: a message whose headers cannot be understood', () => {
  it('is dead-lettered to DATA_DIR/dead in one-process mode, never dropped', async () => {
    const system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test' });
    try {
      const body = Buffer.from('this is not a header\r\n\r\nbody\r\n');
      await system.broker.publishMail({ id: 'DEADBEEF0000000001', envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] }, body, receivedAt: Date.now() });
      const file = join(system.dataDir, 'dead', 'DEADBEEF0000000001');
      assert.ok(existsSync(`${file}.eml`));
      assert.deepEqual(readFileSync(`${file}.eml`), body);
      assert.deepEqual(JSON.parse(readFileSync(`${file}.json`, 'utf8')).envelope, { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] });
      assert.equal((await system.store.stats()).messages, 0);
    } finally {
      await system.close();
    }
  });
});
