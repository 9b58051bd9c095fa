import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import amqp from 'amqplib';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { startPrimary } from './support/primary.ts';
import { spawnService, waitReady, type Service } from './support/processes.ts';
import { assertAllDelivered, queueIdOf, sendMessages } from './support/mail.ts';
import { createVhost } from './support/rabbitmq.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * The four services as separate processes over the real RabbitMQ (a virtual host of the test's
 * own), sharing the SQLite spool under one DATA_DIR, as `npm run start:<service>` runs them.
 */
async function cluster(name: string) {
  const vhost = createVhost();
  const dir = tempDir();
  const primaryPort = await freePort();
  const smtpPort = await freePort();
  const env = {
    RELAY_DOMAINS: 'example.test',
    PRIMARY: `127.0.0.1:${primaryPort}`,
    AMQP_URL: vhost.url,
    DATA_DIR: join(dir.path, 'data'),
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(smtpPort),
    SMTP_HOSTNAME: 'backup.example.test',
    PROBE_INTERVAL: '500ms',
    PROBE_TIMEOUT: '1s',
    DELIVERY_LEASE: '3s',
  };
  const services: Service[] = [];
  const logs = join(dir.path, 'logs');
  async function start(service: string, entry: 'ingress' | 'spool' | 'health' | 'deliverer'): Promise<Service> {
    const started = spawnService(`${name}-${service}`, entry, { ...env, HTTP_PORT: String(await freePort()) }, logs);
    services.push(started);
    await waitReady(started);
    return started;
  }
  return {
    env,
    primaryPort,
    smtpPort,
    start,
    async healthState(health: Service): Promise<string | undefined> {
      const body = (await (await fetch(`http://127.0.0.1:${health.httpPort}/status`)).json()) as { targets: Record<string, { state: string }> };
      return body.targets[`127.0.0.1:${primaryPort}`]?.state;
    },
    async close() {
      await Promise.all(services.map((service) => service.stop('SIGKILL')));
      vhost.remove();
      if (process.env.KEEP_TEST_LOGS) console.log(`logs kept in ${logs}`);
      else dir.remove();
    },
  };
}

const distinctIds = (messages: Parameters<typeof queueIdOf>[0][]) => new Set(messages.map(queueIdOf)).size;

describe('four services over RabbitMQ', () => {
  let system: Awaited<ReturnType<typeof cluster>>;
  let health: Service;
  const running: Service[] = [];
  before(async () => {
    system = await cluster('flow');
    running.push(await system.start('spool', 'spool'), (health = await system.start('health', 'health')), await system.start('deliverer', 'deliverer'), await system.start('ingress', 'ingress'));
  });
  after(() => system.close());

  it('keeps 50 messages while the primary is down and delivers them within 5 s of it being seen up', async () => {
    const sent = await sendMessages(system.smtpPort, 50);
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as /, `message ${message.index}`);
    await waitFor('health to report the primary down', async () => (await system.healthState(health)) === 'down');
    const primary = await startPrimary({ port: system.primaryPort });
    try {
      await waitFor('health to see the primary up', async () => (await system.healthState(health)) === 'up', 15_000);
      await waitFor('all 50 messages at the primary within 5 s', () => distinctIds(primary.messages) >= 50, 5_000);
      assertAllDelivered(sent, primary.messages);
    } finally {
      await primary.close();
    }
  });

  it('stops every service on SIGTERM with exit code 0', async () => {
    const codes = await Promise.all(running.map((service) => service.stop('SIGTERM')));
    assert.deepEqual(codes, [0, 0, 0, 0]);
  });
});

describe('spool killed with SIGKILL while mail flows', () => {
  let system: Awaited<ReturnType<typeof cluster>>;
  before(async () => {
    system = await cluster('spoolkill');
  });
  after(() => system.close());

  it('delivers every message that got a 250', async () => {
    const primary = await startPrimary({ port: system.primaryPort });
    try {
      let spool = await system.start('spool', 'spool');
      await system.start('health', 'health');
      await system.start('deliverer', 'deliverer');
      await system.start('ingress', 'ingress');
      const sending = sendMessages(system.smtpPort, 300, { concurrency: 5 });
      await waitFor('mail to flow', () => primary.messages.length >= 20, 20_000, 5);
      await spool.stop('SIGKILL');
      const whileDown = primary.messages.length;
      spool = await system.start('spool-2', 'spool');
      const sent = await sending;
      assert.ok(sent.every((message) => message.id), `every message was accepted: ${sent.find((message) => !message.id)?.reply}`);
      await waitFor('every accepted message at the primary', () => distinctIds(primary.messages) >= sent.length, 30_000);
      assertAllDelivered(sent, primary.messages);
      assert.ok(whileDown < sent.length, 'the spool was killed while mail was still flowing');
    } finally {
      await primary.close();
    }
  });
});

describe('two deliverers, one killed with SIGKILL in the middle of a flush', () => {
  let system: Awaited<ReturnType<typeof cluster>>;
  before(async () => {
    system = await cluster('delkill');
  });
  after(() => system.close());

  it('loses nothing: the survivor takes over the dead one\'s claims when their lease ends', async () => {
    await system.start('spool', 'spool');
    const health = await system.start('health', 'health');
    const first = await system.start('deliverer-1', 'deliverer');
    await system.start('deliverer-2', 'deliverer');
    await system.start('ingress', 'ingress');
    const sent = await sendMessages(system.smtpPort, 100);
    assert.ok(sent.every((message) => message.id));
    await waitFor('health to report the primary down', async () => (await system.healthState(health)) === 'down');
    const primary = await startPrimary({ port: system.primaryPort, delayMs: 40 });
    try {
      await waitFor('the flush to start', () => primary.messages.length >= 15, 20_000, 5);
      await first.stop('SIGKILL');
      assert.ok(distinctIds(primary.messages) < 100, 'the deliverer was killed mid-flush');
      await waitFor('all 100 messages at the primary', () => distinctIds(primary.messages) >= 100, 30_000);
      assertAllDelivered(sent, primary.messages);
    } finally {
      await primary.close();
    }
  });
});

describe('spool over RabbitMQ: messages it cannot understand', () => {
  let system: Awaited<ReturnType<typeof cluster>>;
  before(async () => {
    system = await cluster('dead');
  });
  after(() => system.close());

  it('go to the dead-letter queue backupmx.dead, with their bytes, and are not spooled', async () => {
    await system.start('spool', 'spool');
    const connection = await amqp.connect(system.env.AMQP_URL);
    try {
      const channel = await connection.createConfirmChannel();
      const envelope = JSON.stringify({ mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] });
      const publish = (id: string, body: string, headers: Record<string, string>) =>
        new Promise<void>((resolve, reject) => channel.publish('backupmx.mail', 'mail.received', Buffer.from(body), { messageId: id, persistent: true, headers }, (error) => (error ? reject(error) : resolve())));
      await publish('NOHEADERS00000001', 'no header here\r\n\r\nbody\r\n', { 'x-envelope': envelope });
      await publish('NOENVELOPE0000001', 'Subject: fine\r\n\r\nbody\r\n', {});
      const dead = await waitFor('two dead letters', async () => ((await channel.checkQueue('backupmx.dead')).messageCount === 2 ? true : null), 15_000);
      assert.ok(dead);
      const ids: string[] = [];
      for (let index = 0; index < 2; index++) {
        const message = await channel.get('backupmx.dead', { noAck: true });
        assert.ok(message);
        ids.push(String(message.properties.messageId));
        if (message.properties.messageId === 'NOHEADERS00000001') assert.equal(message.content.toString(), 'no header here\r\n\r\nbody\r\n');
      }
      assert.deepEqual(ids.sort(), ['NOENVELOPE0000001', 'NOHEADERS00000001']);
      assert.equal((await channel.checkQueue('backupmx.spool')).messageCount, 0);
    } finally {
      await connection.close();
    }
    const store = await openSqliteStore(join(system.env.DATA_DIR, 'spool.sqlite'));
    try {
      assert.equal((await store.stats()).messages, 0);
    } finally {
      await store.close();
    }
  });
});
