import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { sendSignal, spawnService, waitReady, type Service } from './support/processes.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

const refused = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = connect({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', () => resolve(true));
  });

/**
 * Issue 2, every service: SIGTERM stops taking new work and finishes what is in flight. Here a
 * sender is in the middle of DATA when `npm start` gets SIGTERM: new connections are refused, the
 * message in flight still gets its 250 and is in the spool, and the process exits 0.
 */
describe('SIGTERM with a message in flight (one process)', () => {
  const dir = tempDir();
  let system: Service;
  let smtpPort: number;

  before(async () => {
    const [primaryPort, httpPort] = [await freePort(), await freePort()];
    smtpPort = await freePort();
    system = spawnService('all', 'all', {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: `127.0.0.1:${primaryPort}`,
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(smtpPort),
      HTTP_PORT: String(httpPort),
      DATA_DIR: join(dir.path, 'data'),
      SENDER_AUTH: 'false',
    }, join(dir.path, 'logs'));
    await waitReady(system);
  });
  after(async () => {
    await system.stop('SIGKILL');
    dir.remove();
  });

  it('refuses new connections, answers 250 to the transaction in flight, keeps the message, and exits 0', async () => {
    const smtp = await openSession(smtpPort);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    assert.match(await smtp.command('MAIL FROM:<sender@origin.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
    assert.match(await smtp.command('DATA'), /^354 /);
    smtp.write('Subject: in flight\r\n\r\nbody\r\n');
    sendSignal(system.child, 'SIGTERM');
    await waitFor('new connections to be refused', () => refused(smtpPort));
    const reply = await smtp.data('.\r\n');
    assert.match(reply, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/);
    const id = /queued as ([0-9A-Z]+)/.exec(reply)?.[1] ?? '';
    smtp.write('QUIT\r\n');
    assert.equal(await system.exited, 0, 'exit code');
    smtp.close();
    const store = await openSqliteStore(join(dir.path, 'data', 'spool.sqlite'));
    try {
      const record = await store.getMessage(id);
      assert.deepEqual(record?.deliveries.map((delivery) => [delivery.recipient, delivery.state]), [['user@example.test', 'queued']]);
    } finally {
      await store.close();
    }
  });
});
