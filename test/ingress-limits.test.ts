import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../shared/src/runtime/logger.ts';
import { createMonitor } from '../services/health/src/monitor.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { startPrimary } from './support/primary.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, waitFor } from './support/util.ts';

const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
type System = Awaited<ReturnType<typeof startIngressWithSpool>>;

/** Clients on other loopback addresses (Linux routes all of 127/8 to lo). */
const CLIENT = { a: '127.0.0.1', b: '127.0.0.2', c: '127.0.0.3', d: '127.0.0.4', e: '127.0.0.5' };

describe('ingress: connection limits', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', MAX_CONNECTIONS: '3', MAX_CONNECTIONS_PER_IP: '2' }, { ingress: { resolver } });
  });
  after(() => system.close());

  it('answers 421 4.7.0 at connect over the per-client and the total limit, and admits again when sessions end', async () => {
    const first = await openSession(system.port, '127.0.0.1', CLIENT.a);
    const second = await openSession(system.port, '127.0.0.1', CLIENT.a);
    assert.match(first.greeting, /^220 /);
    assert.match(second.greeting, /^220 /);
    const third = await openSession(system.port, '127.0.0.1', CLIENT.a);
    assert.equal(third.greeting, '421 4.7.0 backup.example.test Error: too many connections from 127.0.0.1');
    await waitFor('the refused session to close', () => third.closed());

    const other = await openSession(system.port, '127.0.0.1', CLIENT.b);
    assert.match(other.greeting, /^220 /, 'another client still gets in');
    const overTotal = await openSession(system.port, '127.0.0.1', CLIENT.c);
    assert.equal(overTotal.greeting, '421 4.7.0 backup.example.test Error: too many connections, try again later');

    first.close();
    await waitFor('a free slot', () => system.ingress.counted().connections === 2);
    const again = await openSession(system.port, '127.0.0.1', CLIENT.a);
    assert.match(again.greeting, /^220 /);
    for (const smtp of [second, other, again, overTotal]) smtp.close();
  });
});

describe('ingress: message and recipient rates per client', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', MESSAGES_PER_IP_PER_MINUTE: '2', RECIPIENTS_PER_IP_PER_MINUTE: '3' }, { ingress: { resolver } });
  });
  after(() => system.close());

  it('answers 450 4.7.1 at RCPT to the message over the limit', async () => {
    const smtp = await openSession(system.port, '127.0.0.1', CLIENT.d);
    await smtp.command('EHLO client.origin.test');
    for (let message = 0; message < 2; message++) {
      assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
      assert.match(await smtp.command(`RCPT TO:<user${message}@example.test>`), /^250 /);
      assert.match(await smtp.command('RSET'), /^250 /);
    }
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.equal(await smtp.command('RCPT TO:<user@example.test>'), '450 4.7.1 Error: too much mail from 127.0.0.4, try again later');
    assert.match(await smtp.command('RCPT TO:<other@example.test>'), /^450 4\.7\.1 /, 'and for the rest of that message');
    smtp.close();
    const other = await openSession(system.port, '127.0.0.1', CLIENT.a);
    await other.command('EHLO client.origin.test');
    await other.command('MAIL FROM:<a@origin.test>');
    assert.match(await other.command('RCPT TO:<user@example.test>'), /^250 /, 'other clients are not affected');
    other.close();
  });

  it('answers 450 4.7.1 to recipients over the limit, counting refused ones too', async () => {
    const smtp = await openSession(system.port, '127.0.0.1', CLIENT.e);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<a@origin.test>');
    assert.match(await smtp.command('RCPT TO:<user1@example.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@elsewhere.test>'), /^550 5\.7\.1 /);
    assert.match(await smtp.command('RCPT TO:<user2@example.test>'), /^250 /);
    assert.equal(await smtp.command('RCPT TO:<user3@example.test>'), '450 4.7.1 Error: too many recipients from 127.0.0.5, try again later');
    assert.match(await smtp.command('DATA'), /^354 /, 'the recipients taken so far still get the message');
    assert.match(await smtp.data('Subject: x\r\n\r\nhi\r\n.\r\n'), /^250 2\.0\.0 /);
    smtp.close();
  });
});

describe('ingress: header size limit', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', MAX_HEADER_SIZE: '2048' }, { ingress: { resolver } });
  });
  after(() => system.close());

  it('refuses a header section over MAX_HEADER_SIZE with 552 5.3.4 after reading it all, and takes a large body', async () => {
    const smtp = await openSession(system.port);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    const bigHeader = Array.from({ length: 40 }, (_, index) => `X-Filler-${index}: ${'h'.repeat(60)}\r\n`).join('');
    assert.equal(await smtp.data(`${bigHeader}Subject: x\r\n\r\nbody\r\n.\r\n`), '552 5.3.4 Message header size exceeds limit of 2048 bytes');
    assert.equal((await system.store.stats()).messages, 0);
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    assert.match(await smtp.data(`Subject: small header\r\n\r\n${`${'b'.repeat(70)}\r\n`.repeat(2000)}.\r\n`), /^250 2\.0\.0 /);
    smtp.close();
  });
});

describe('ingress: standby while the primary is up (ACCEPT_WHEN_PRIMARY_UP=false)', () => {
  let system: System;
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  let monitor: ReturnType<typeof createMonitor>;
  before(async () => {
    const port = await freePort();
    primary = await startPrimary({ port });
    system = await startIngressWithSpool(
      { RELAY_DOMAINS: 'example.test', PRIMARY: `127.0.0.1:${port}`, GREETING_DELAY: '0', ACCEPT_WHEN_PRIMARY_UP: 'false', PROBE_INTERVAL: '100ms', PROBE_TIMEOUT: '1s', PROBE_FAILURES: '1', PROBE_SUCCESSES: '1' },
      { ingress: { resolver } },
    );
    // The real health monitor, publishing on the same (in-process) broker.
    monitor = createMonitor(system.config, system.broker, createLogger('test', 'silent'));
    monitor.start();
  });
  after(async () => {
    await monitor.stop();
    await system.close();
    await primary.close();
  });

  const greeting = async () => {
    const smtp = await openSession(system.port);
    smtp.close();
    return smtp.greeting;
  };

  it('answers 421 4.3.2 at connect while the health service says the primary is up', async () => {
    const reply = await waitFor('the standby refusal', async () => {
      const text = await greeting();
      return text.startsWith('421') ? text : null;
    });
    assert.equal(reply, '421 4.3.2 backup.example.test Service not available: the primary mail server is up, please use it');
  });

  it('accepts mail again once the primary is down', async () => {
    await primary.close();
    await waitFor('the greeting to come back', async () => (await greeting()).startsWith('220 '));
    const smtp = await openSession(system.port);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    assert.match(await smtp.data('Subject: while the primary is down\r\n\r\nhi\r\n.\r\n'), /^250 2\.0\.0 /);
    smtp.close();
  });
});
