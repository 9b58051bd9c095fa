import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { spawnService, waitReady, type Service } from './support/processes.ts';
import { sendMessages } from './support/mail.ts';
import { createVhost } from './support/rabbitmq.ts';
import { openSession } from './support/smtp-session.ts';
import { startProxy } from './support/tcp-proxy.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * Ingress reaches RabbitMQ through a TCP proxy the test controls. While the broker is cut off, or
 * never confirms, senders get 451 4.3.0 and keep their mail; once it is back, 250 again, by itself.
 */
describe('ingress when RabbitMQ is cut off', () => {
  const vhost = createVhost();
  const dir = tempDir();
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  let ingress: Service;
  let spool: Service;
  let smtpPort: number;

  before(async () => {
    proxy = await startProxy(5672);
    smtpPort = await freePort();
    const env = { RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:1', DATA_DIR: join(dir.path, 'data'), SMTP_HOST: '127.0.0.1', SMTP_PORT: String(smtpPort), PUBLISH_TIMEOUT: '2s' };
    spool = spawnService('spool', 'spool', { ...env, AMQP_URL: vhost.url, HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs'));
    ingress = spawnService('ingress', 'ingress', { ...env, AMQP_URL: vhost.url.replace(':5672/', `:${proxy.port}/`), HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs'));
    await Promise.all([waitReady(spool), waitReady(ingress)]);
  });
  after(async () => {
    await Promise.all([ingress.stop('SIGKILL'), spool.stop('SIGKILL')]);
    await proxy.close();
    vhost.remove();
    dir.remove();
  });

  async function sendOne(): Promise<string> {
    const smtp = await openSession(smtpPort);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<sender@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    const reply = await smtp.data('Subject: cut\r\n\r\nbody\r\n.\r\n');
    smtp.close();
    return reply;
  }
  const readyz = async () => (await fetch(`http://127.0.0.1:${ingress.httpPort}/readyz`)).status;
  const accepted: string[] = [];
  const keep = (reply: string) => {
    const id = /queued as ([0-9A-Z]+)/.exec(reply)?.[1];
    if (id) accepted.push(id);
    return reply;
  };

  it('answers 250 while the broker is reachable', async () => {
    assert.match(keep(await sendOne()), /^250 2\.0\.0 Ok: queued as /);
  });

  it('answers 451 4.3.0 once the connection to the broker is gone, and says not ready', async () => {
    await proxy.close();
    assert.equal(await sendOne(), '451 4.3.0 Temporary failure: message not queued, try again later');
    await waitFor('readyz 503', async () => (await readyz()) === 503);
  });

  it('reconnects by itself and answers 250 again after the broker is back', async () => {
    await proxy.open();
    await waitFor('ingress to reconnect', async () => (await readyz()) === 200, 30_000);
    assert.match(keep(await sendOne()), /^250 2\.0\.0 Ok: queued as /);
  });

  it('answers 451 4.3.0 when the broker takes the message but never confirms it', async () => {
    proxy.stall();
    assert.equal(await sendOne(), '451 4.3.0 Temporary failure: message not queued, try again later');
    await proxy.close();
    await proxy.open();
    await waitFor('ingress to reconnect', async () => (await readyz()) === 200, 30_000);
    const sent = await sendMessages(smtpPort, 5);
    for (const message of sent) assert.match(keep(message.reply), /^250 2\.0\.0 /);
  });

  it('has every message that got a 250 in the spool', async () => {
    const store = await openSqliteStore(join(dir.path, 'data', 'spool.sqlite'));
    try {
      await waitFor('every accepted message in the spool', async () => {
        for (const id of accepted) if (!(await store.getMessage(id))) return false;
        return true;
      });
      assert.equal(accepted.length, 7);
    } finally {
      await store.close();
    }
  });
});
