import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { startIngressWithSpool } from './support/in-process.ts';
import { waitFor } from './support/util.ts';

/**
 * Issue 2: the deliverer reuses its connections to the primary across messages (no new TCP
 * connection, greeting and EHLO for every message). The primary here counts the messages each
 * connection carried.
 */
describe('deliverer: connections to the primary are reused across messages', () => {
  const perConnection = new Map<string, number>();
  let primary: SMTPServer;
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;

  before(async () => {
    primary = new SMTPServer({
      disabledCommands: ['AUTH', 'STARTTLS'],
      logger: false,
      closeTimeout: 500,
      onConnect(session, callback) {
        perConnection.set(session.id, 0);
        callback();
      },
      onData(stream, session, callback) {
        stream.resume();
        stream.on('end', () => {
          perConnection.set(session.id, (perConnection.get(session.id) ?? 0) + 1);
          callback();
        });
      },
    });
    await new Promise<void>((resolve) => primary.listen(0, '127.0.0.1', () => resolve()));
    const port = (primary.server.address() as AddressInfo).port;
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', PRIMARY: `127.0.0.1:${port}`, DELIVERY_CONCURRENCY: '1', SENDER_AUTH: 'false' }, { deliver: true });
  });
  after(async () => {
    await system.close();
    await new Promise<void>((resolve) => primary.close(() => resolve()));
  });

  it('sends several messages over one connection', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: system.port, secure: false, ignoreTLS: true });
    try {
      for (let i = 0; i < 5; i++) {
        const info = await transport.sendMail({ envelope: { from: 'sender@origin.test', to: [`user${i}@example.test`] }, raw: `Subject: reuse ${i}\r\n\r\nbody\r\n` });
        assert.match(info.response, /^250 2\.0\.0 Ok: queued as /);
      }
    } finally {
      transport.close();
    }
    const counts = () => [...perConnection.values()];
    await waitFor('all 5 messages at the primary', () => counts().reduce((sum, n) => sum + n, 0) >= 5);
    assert.equal(counts().reduce((sum, n) => sum + n, 0), 5, 'each message delivered once');
    assert.ok(Math.max(...counts()) > 1, `a connection carried more than one message (messages per connection: ${counts().join(', ')})`);
  });
});
