/**
 * The spool while its store cannot take writes (MongoDB unreachable): it acknowledges nothing, the
 * message stays in RabbitMQ and is stored once the store is back; /readyz says not ready meanwhile.
 * The store here is SQLite with its readiness switched off and on (no MongoDB server runs here).
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { Writable } from 'node:stream';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import amqp from 'amqplib';
import { pino } from 'pino';
import { createAmqpBroker } from '../shared/src/broker/amqp-broker.ts';
import { TOPOLOGY } from '../shared/src/broker/broker.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { closeHttp, startHttp } from '../shared/src/runtime/http.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import type { Store } from '../shared/src/store/store.ts';
import { createSpoolHandler, PREFETCH } from '../services/spool/src/spool.ts';
import { createVhost } from './support/rabbitmq.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

describe('spool while the store is not ready', () => {
  const vhost = createVhost();
  const dir = tempDir();
  const lines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write: (chunk, _enc, done) => void (lines.push(String(chunk)), done()) }));
  let sqlite: Store;
  let up = false;
  let store: Store;
  const puts: string[] = [];
  const broker = createAmqpBroker({ url: vhost.url, name: 'spool-gate-test', confirmTimeoutMs: 5000, log });

  before(async () => {
    sqlite = await openSqliteStore(join(dir.path, 'spool.sqlite'));
    store = {
      ...sqlite,
      ready: () => up && sqlite.ready(),
      put: (mail, routes) => (puts.push(mail.id), sqlite.put(mail, routes)),
    };
    await broker.start();
    await waitFor('RabbitMQ', () => broker.connected());
    const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:2' });
    await broker.consumeMail(createSpoolHandler(config, store, broker, log, 200), PREFETCH);
  });

  after(async () => {
    await broker.close();
    await sqlite.close();
    vhost.remove();
    dir.remove();
  });

  it('/readyz answers 503 naming the store', async () => {
    const port = await freePort();
    const http = await startHttp({ host: '127.0.0.1', port, log, ready: () => ({ broker: broker.connected(), store: store.ready() }) });
    try {
      const response = await fetch(`http://127.0.0.1:${port}/readyz`);
      assert.equal(response.status, 503);
      assert.deepEqual(((await response.json()) as { checks: unknown }).checks, { broker: true, store: false });
    } finally {
      await closeHttp(http);
    }
  });

  it('acknowledges nothing until the store is back, then stores the message once', async () => {
    const mail = {
      id: 'GATE0001',
      envelope: { mailFrom: 'sender@origin.test', rcptTo: ['user@example.test'] },
      body: Buffer.from('Subject: waiting\r\n\r\nbody\r\n'),
      receivedAt: Date.now(),
    };
    await broker.publishMail(mail);
    const retried = () => lines.filter((line) => line.includes('message not stored yet; retrying') && line.includes(mail.id)).length;
    await waitFor('the spool to try the unready store twice', () => retried() >= 2, 20_000);
    assert.deepEqual(puts, [], 'no write was attempted while the store was not ready');
    assert.equal(await sqlite.getMessage(mail.id), null);
    assert.ok(lines.some((line) => line.includes('the store is not ready')), 'the log says why');

    up = true;
    const stored = await waitFor('the message to be stored once the store is back', () => sqlite.getMessage(mail.id), 20_000);
    assert.deepEqual(stored.deliveries.map((d) => [d.recipient, d.state]), [['user@example.test', 'queued']]);
    assert.deepEqual(puts, [mail.id]);

    // Acknowledged now: nothing is left in RabbitMQ's queue, ready or unacknowledged.
    await broker.close();
    const connection = await amqp.connect(vhost.url);
    try {
      const channel = await connection.createChannel();
      assert.equal((await channel.checkQueue(TOPOLOGY.spoolQueue)).messageCount, 0);
    } finally {
      await connection.close();
    }
  });
});

describe('spool while DATA_DIR is below DISK_HEADROOM (four services, SQLite)', () => {
  const vhost = createVhost();
  const dir = tempDir();
  const lines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write: (chunk, _enc, done) => void (lines.push(String(chunk)), done()) }));
  let store: Store;
  let low = true;
  const disk = { threshold: 2_000_000, check: () => ({ free: low ? 1_000 : 10_000_000, low }), admit: () => () => {} };
  const broker = createAmqpBroker({ url: vhost.url, name: 'spool-disk-test', confirmTimeoutMs: 5000, log });

  before(async () => {
    store = await openSqliteStore(join(dir.path, 'spool.sqlite'));
    await broker.start();
    await waitFor('RabbitMQ', () => broker.connected());
    const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:2' });
    await broker.consumeMail(createSpoolHandler(config, store, broker, log, 200, disk), PREFETCH);
  });

  after(async () => {
    await broker.close();
    await store.close();
    vhost.remove();
    dir.remove();
  });

  it('leaves new mail in RabbitMQ, saying why, and stores it once there is room again', async () => {
    const mail = {
      id: 'DISK0001',
      envelope: { mailFrom: 'sender@origin.test', rcptTo: ['user@example.test'] },
      body: Buffer.from('Subject: waiting for room\r\n\r\nbody\r\n'),
      receivedAt: Date.now(),
    };
    await broker.publishMail(mail);
    await waitFor('the spool to say why it waits', () => lines.some((line) => line.includes('DATA_DIR is below DISK_HEADROOM (1000 bytes free, 2000000 kept') && line.includes(mail.id)), 20_000);
    assert.equal(await store.getMessage(mail.id), null, 'nothing written while the disk is short');
    low = false;
    const stored = await waitFor('the message stored once there is room', () => store.getMessage(mail.id), 20_000);
    assert.deepEqual(stored.deliveries.map((d) => [d.recipient, d.state]), [['user@example.test', 'queued']]);
  });
});
