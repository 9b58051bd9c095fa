import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { registry } from '../shared/src/runtime/metrics.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { sample } from './support/metrics.ts';
import { openSession } from './support/smtp-session.ts';

/**
 * Every relay and protocol rule of ingress, as a sending MTA sees it: the exact reply code and
 * enhanced status code, and that a refused message left nothing in the spool.
 */
describe('ingress: relay and protocol rules', () => {
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  before(async () => {
    // No DNS here: every lookup answers "no such name" (sender authentication then finds nothing).
    const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test,Backup.Example.Org', MAX_MESSAGE_SIZE: '4096', MAX_RECIPIENTS: '100' }, { ingress: { resolver } });
  });
  after(() => system.close());

  async function session() {
    const smtp = await openSession(system.port);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    return smtp;
  }
  const storedMessages = async () => (await system.store.stats()).messages;

  it('greets with our name and advertises SIZE, 8BITMIME, SMTPUTF8, PIPELINING, ENHANCEDSTATUSCODES, and no AUTH', async () => {
    const smtp = await openSession(system.port);
    assert.match(smtp.greeting, /^220 backup\.example\.test /);
    const lines = await smtp.commandLines('EHLO client.origin.test');
    const keywords = lines.slice(1).map((line) => line.slice(4));
    for (const keyword of ['SIZE 4096', '8BITMIME', 'SMTPUTF8', 'PIPELINING', 'ENHANCEDSTATUSCODES']) assert.ok(keywords.includes(keyword), `EHLO lacks ${keyword}: ${lines.join(' | ')}`);
    assert.ok(!keywords.some((keyword) => keyword.startsWith('AUTH')), 'AUTH must not be offered');
    assert.ok(!keywords.includes('STARTTLS'), 'STARTTLS is offered only with a certificate');
    smtp.close();
  });

  it('accepts the null sender', async () => {
    const smtp = await session();
    assert.equal(await smtp.command('MAIL FROM:<>'), '250 2.1.0 Accepted');
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 2\.1\.5 /);
    smtp.close();
  });

  const refused: Array<[string, string]> = [
    ['another domain', 'user@elsewhere.test'],
    ['a subdomain that is not listed', 'user@sub.example.test'],
    ['a domain that only ends like ours', 'user@notexample.test'],
    ['the percent hack', 'user%elsewhere.test@example.test'],
    ['a bang path', 'elsewhere.test!user@example.test'],
    ['an address literal', 'user@[127.0.0.1]'],
    ['a source route to a foreign mailbox (the route is stripped, RFC 5321 C)', '@example.test:user@elsewhere.test'],
    ['a domainless mailbox', 'postmaster'],
  ];
  for (const [what, address] of refused) {
    it(`refuses ${what} with 550 5.7.1`, async () => {
      const smtp = await session();
      assert.match(await smtp.command('MAIL FROM:<sender@origin.test>'), /^250 /);
      assert.match(await smtp.command(`RCPT TO:<${address}>`), /^550 5\.7\.1 .*Relay access denied/);
      assert.match(await smtp.command('DATA'), /^503 /, 'DATA without an accepted recipient is refused');
      smtp.close();
      assert.equal(await storedMessages(), 0);
    });
  }

  it('refuses a quoted local part hiding another @ as routing, 550 5.7.1', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<sender@origin.test>');
    assert.equal(await smtp.command('RCPT TO:<"user@elsewhere.test"@example.test>'), '550 5.7.1 <"user@elsewhere.test"@example.test>: Relay access denied (routing in local part)');
    assert.match(await smtp.command('DATA'), /^503 /);
    smtp.close();
    assert.equal(await storedMessages(), 0);
  });

  it('ignores one trailing dot on the domain (as Postfix): ours is taken, others still refused', async () => {
    const smtp = await session();
    assert.match(await smtp.command('MAIL FROM:<sender@origin.test.>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@Example.Test.>'), /^250 2\.1\.5 /);
    assert.match(await smtp.command('RCPT TO:<user@elsewhere.test.>'), /^550 5\.7\.1 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test..>'), /^501 5\.1\.3 /);
    smtp.close();
  });

  it('compares domains case-insensitively and matches every listed domain exactly', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<sender@origin.test>');
    assert.match(await smtp.command('RCPT TO:<User@EXAMPLE.Test>'), /^250 2\.1\.5 /);
    assert.match(await smtp.command('RCPT TO:<user@backup.example.org>'), /^250 2\.1\.5 /);
    assert.match(await smtp.command('RCPT TO:<user@example.org>'), /^550 5\.7\.1 /);
    smtp.close();
  });

  it('takes 100 recipients and answers the 101st with 452 4.5.3', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<sender@origin.test>');
    for (let index = 0; index < 100; index++) assert.match(await smtp.command(`RCPT TO:<user${index}@example.test>`), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user100@example.test>'), /^452 4\.5\.3 /);
    assert.match(await smtp.command('RSET'), /^250 /);
    smtp.close();
  });

  it('refuses a message over MAX_MESSAGE_SIZE with 552 5.3.4 after reading it all, and stores nothing', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<sender@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    assert.match(await smtp.command('DATA'), /^354 /);
    const reply = await smtp.data(`Subject: big\r\n\r\n${'x'.repeat(76)}\r\n`.repeat(80) + '.\r\n');
    assert.match(reply, /^552 5\.3\.4 /);
    // The session is still usable: the whole message was read.
    assert.match(await smtp.command('NOOP'), /^250 /);
    smtp.close();
    assert.equal(await storedMessages(), 0);
  });

  it('refuses a declared SIZE over the limit at MAIL FROM', async () => {
    const smtp = await session();
    assert.match(await smtp.command('MAIL FROM:<sender@origin.test> SIZE=999999'), /^552 5\.3\.4 /);
    smtp.close();
  });

  it('counts the refusals smtp-server itself gives at MAIL and RCPT on /metrics, by reply and enhanced code', async () => {
    const count = async (labels: Record<string, string>) => sample(await registry.metrics(), 'backupmx_smtp_rejections_total', labels) ?? 0;
    const tooLarge = { stage: 'mail', code: '552', status: '5.3.4' };
    const badSyntax = { stage: 'rcpt', code: '501', status: '5.1.3' };
    const [largeBefore, syntaxBefore] = [await count(tooLarge), await count(badSyntax)];
    const smtp = await session();
    assert.match(await smtp.command('MAIL FROM:<sender@origin.test> SIZE=999999'), /^552 5\.3\.4 /);
    assert.match(await smtp.command('MAIL FROM:<sender@origin.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<not an address>'), /^501 5\.1\.3 /);
    smtp.close();
    assert.equal(await count(tooLarge), largeBefore + 1, 'a declared SIZE over the limit is a message refused for its size');
    assert.equal(await count(badSyntax), syntaxBefore + 1);
  });

  it('refuses a message with more than 50 Received headers as a loop (554 5.4.6), takes one with 50', async () => {
    const hops = (count: number) => Array.from({ length: count }, (_, index) => `Received: from hop${index}.test by hop${index + 1}.test; Sat, 28 Nov 2026 09:00:00 +0000\r\n`).join('');
    const smtp = await session();
    await smtp.command('MAIL FROM:<sender@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    assert.match(await smtp.data(`${hops(51)}Subject: loop\r\n\r\nbody\r\n.\r\n`), /^554 5\.4\.6 /);
    assert.equal(await storedMessages(), 0);
    await smtp.command('MAIL FROM:<sender@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    assert.match(await smtp.data(`${hops(50)}Subject: fine\r\n\r\nbody\r\n.\r\n`), /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/);
    smtp.close();
    assert.equal(await storedMessages(), 1);
  });

  it('queues accepted mail with one Received header on top, then Authentication-Results, and the sender\'s bytes intact', async () => {
    const before = await storedMessages();
    const body = 'From: a@origin.test\r\nTo: user@example.test\r\nSubject: =?UTF-8?Q?h=C3=A9?=\r\nDKIM-Signature: v=1; a=rsa-sha256; d=origin.test;\r\n\tb=abc\r\n\r\nline one\r\n..leading dot\r\n\xe9 8-bit\r\n';
    const smtp = await session();
    await smtp.command('MAIL FROM:<a@origin.test> BODY=8BITMIME');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    const reply = await smtp.data(Buffer.from(`${body}.\r\n`, 'latin1'));
    const id = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)$/.exec(reply)?.[1];
    assert.ok(id, reply);
    smtp.close();
    assert.equal(await storedMessages(), before + 1);
    const stored = await system.store.getMessage(id);
    assert.equal(stored?.message.mailFrom, 'a@origin.test');
    assert.deepEqual(stored?.message.recipients, ['user@example.test']);
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    const raw = Buffer.concat(chunks).toString('latin1');
    const received = /^Received: from client\.origin\.test \(\[127\.0\.0\.1\]\)\r\n\tby backup\.example\.test \(backupmx\) with ESMTP id ([0-9A-Z]+)\r\n\tfor <user@example\.test>; (\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d \+0000)\r\n/.exec(raw);
    assert.ok(received, `unexpected trace header:\n${raw.slice(0, 300)}`);
    assert.equal(received[1], id);
    // Then our Authentication-Results, naming us; then the sender's bytes: dot-stuffing undone,
    // everything else byte for byte.
    const rest = raw.slice(received[0].length);
    const results = /^Authentication-Results: backup\.example\.test;(?:[^\r\n]*\r\n[ \t])*[^\r\n]*\r\n/.exec(rest);
    assert.ok(results, `no Authentication-Results below the Received header:\n${rest.slice(0, 300)}`);
    assert.equal(rest.slice(results[0].length), body.replace('..leading', '.leading'));
  });

  it('says "for" only when there is exactly one recipient', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: system.port, secure: false, ignoreTLS: true });
    const info = await transport.sendMail({ envelope: { from: 'a@origin.test', to: ['u1@example.test', 'u2@example.test'] }, raw: 'Subject: two\r\n\r\nhi\r\n' });
    const id = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1] ?? '';
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    const header = Buffer.concat(chunks).toString('latin1').split('\r\n').slice(0, 3);
    assert.match(header[1] ?? '', new RegExp(`^\\tby backup\\.example\\.test \\(backupmx\\) with ESMTP id ${id};$`));
    assert.match(header[2] ?? '', /^\t\w{3}, /);
    transport.close();
  });
});
