import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { connect } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession } from './support/smtp-session.ts';
import { waitFor } from './support/util.ts';

/** No DNS in tests: every lookup answers "no such name". */
const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));

type System = Awaited<ReturnType<typeof startIngressWithSpool>>;

async function stored(system: System): Promise<number> {
  return (await system.store.stats()).messages;
}

/** A normal message still gets through: the server keeps serving. */
async function assertStillServing(system: System): Promise<void> {
  const smtp = await openSession(system.port);
  assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
  assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
  assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
  assert.match(await smtp.command('DATA'), /^354 /);
  assert.match(await smtp.data('Subject: still here\r\n\r\nhello\r\n.\r\n'), /^250 2\.0\.0 Ok: queued as /);
  smtp.close();
}

/**
 * Hostile and broken clients: each gets the reply RFC 5321 (or 6531) gives, or a clean close;
 * nothing they send is stored, and the server goes on serving others.
 */
describe('ingress: hostile input', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool(
      { RELAY_DOMAINS: 'example.test,xn--bcher-kva.test', GREETING_DELAY: '0', MAX_COMMAND_LENGTH: '1000', MAX_ERRORS: '20' },
      { ingress: { resolver } },
    );
  });
  after(() => system.close());

  async function session() {
    const smtp = await openSession(system.port);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    return smtp;
  }

  const relayAttempts: Array<[string, RegExp]> = [
    ['user%elsewhere.test@example.test', /^550 5\.7\.1 /],
    ['USER%ELSEWHERE.TEST@EXAMPLE.TEST', /^550 5\.7\.1 /],
    ['"user%elsewhere.test"@example.test', /^550 5\.7\.1 /],
    ['elsewhere.test!user@example.test', /^550 5\.7\.1 /],
    ['ELSEWHERE.TEST!user@Example.Test', /^550 5\.7\.1 /],
    ['@example.test:user@elsewhere.test', /^550 5\.7\.1 /],
    ['@example.test,@relay.test:user@elsewhere.test', /^550 5\.7\.1 /],
    ['user@[127.0.0.1]', /^550 5\.7\.1 /],
    ['user@[IPv6:::1]', /^550 5\.7\.1 /],
    ['USER@ELSEWHERE.TEST', /^550 5\.7\.1 /],
    ['user@example.test.elsewhere.test', /^550 5\.7\.1 /],
    ['user@elsewhere.test.', /^550 5\.7\.1 /],
    ['"user@elsewhere.test"@example.test', /^550 5\.7\.1 .*routing in local part/],
    ['@relay.test:"user@elsewhere.test"@example.test', /^550 5\.7\.1 /],
    ['user@elsewhere.test@example.test', /^501 5\.1\.3 /],
    ['user@elsewhere.test%example.test', /^501 5\.1\.3 /],
  ];
  it('refuses every form of open relay attempt at RCPT and stores nothing', async () => {
    const before = await stored(system);
    for (const [address, reply] of relayAttempts) {
      const smtp = await session();
      assert.match(await smtp.command('MAIL FROM:<spammer@origin.test>'), /^250 /);
      assert.match(await smtp.command(`RCPT TO:<${address}>`), reply, address);
      assert.match(await smtp.command('DATA'), /^503 5\.5\.1 /, `${address}: DATA without a recipient`);
      smtp.close();
    }
    assert.equal(await stored(system), before);
  });

  it('answers malformed commands with the RFC 5321 reply codes', async () => {
    const smtp = await openSession(system.port);
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^503 5\.5\.1 /, 'MAIL before EHLO');
    assert.match(await smtp.command('EHLO'), /^501 /, 'EHLO without a name');
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    assert.match(await smtp.command('XYZZY'), /^500 5\.5\.2 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^503 5\.5\.1 /, 'RCPT before MAIL');
    assert.match(await smtp.command('DATA'), /^503 5\.5\.1 /, 'DATA before MAIL');
    assert.match(await smtp.command('MAIL FROM:a@origin.test'), /^501 5\.1\.7 /, 'no angle brackets');
    assert.match(await smtp.command('MAIL FROM:<a@origin.test> SIZE'), /^501 /, 'SIZE without a value');
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^503 5\.5\.1 /, 'nested MAIL');
    assert.match(await smtp.command('RCPT TO:<>'), /^501 5\.1\.3 /);
    assert.match(await smtp.command('RCPT TO:'), /^501 5\.1\.3 /);
    smtp.close();
  });

  it('refuses invalid addresses with 501', async () => {
    const smtp = await session();
    for (const address of ['user@@example.test', 'user..x@example.test', '.user@example.test', 'user.@example.test', 'user@example..test', 'user@.example.test', 'us er@origin.test']) {
      assert.equal(await smtp.command(`MAIL FROM:<${address}>`), '501 5.1.7 Error: Bad sender address syntax', address);
    }
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    for (const address of ['user@@example.test', 'us er@example.test', 'user@exa mple.test', '<user@example.test>']) {
      assert.match(await smtp.command(`RCPT TO:<${address}>`), /^501 5\.1\.3 /, address);
    }
    smtp.close();
  });

  it('answers an overlong command line with 500 5.5.2 and goes on with the session', async () => {
    const smtp = await session();
    assert.equal(await smtp.command(`NOOP ${'x'.repeat(3000)}`), '500 5.5.2 Error: line too long');
    // Split over many writes, with the next command pipelined behind it.
    const long = `MAIL FROM:<${'a'.repeat(5000)}@origin.test>\r\nNOOP\r\n`;
    for (let offset = 0; offset < long.length; offset += 700) smtp.write(long.slice(offset, offset + 700));
    assert.equal(await smtp.reply(), '500 5.5.2 Error: line too long');
    assert.match(await smtp.reply(), /^250 /, 'the command after the long line runs');
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
    smtp.close();
  });

  it('does not touch long message lines sent together with DATA by a client that does not wait for 354', async () => {
    const smtp = await session();
    const long = 'y'.repeat(3000);
    smtp.write(`MAIL FROM:<a@origin.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\nSubject: eager\r\n\r\n${long}\r\n.\r\n`);
    assert.match(await smtp.reply(), /^250 /);
    assert.match(await smtp.reply(), /^250 /);
    assert.match(await smtp.reply(), /^354 /);
    const id = /queued as ([0-9A-Z]+)/.exec(await smtp.reply())?.[1];
    assert.ok(id);
    smtp.close();
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    assert.ok(Buffer.concat(chunks).toString('latin1').endsWith(`\r\n\r\n${long}\r\n`));
  });

  it('refuses commands holding NUL bytes', async () => {
    const smtp = await session();
    assert.match(await smtp.command('NO\0OP'), /^500 5\.5\.2 /);
    assert.match(await smtp.command('MAIL FROM:<a\0b@origin.test>'), /^501 5\.1\.7 /);
    assert.match(await smtp.command('EHLO a\0b'), /^501 /);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<us\0er@example.test>'), /^501 5\.1\.3 /);
    smtp.close();
  });

  it('takes bare-LF commands, but only CRLF.CRLF ends the data: smuggled commands stay in the message', async () => {
    const before = await stored(system);
    const smtp = await openSession(system.port);
    assert.match(await smtp.data('EHLO client.origin.test\n'), /^250 /);
    assert.match(await smtp.data('MAIL FROM:<a@origin.test>\n'), /^250 /);
    assert.match(await smtp.data('RCPT TO:<user@example.test>\n'), /^250 /);
    assert.match(await smtp.data('DATA\n'), /^354 /);
    const smuggled = 'Subject: smuggle\n\nbody\n.\nMAIL FROM:<evil@origin.test>\nRCPT TO:<victim@example.test>\nDATA\nSubject: second\r\n.\nx\r\n.\n';
    const reply = await smtp.data(`${smuggled}\r\n.\r\n`);
    const id = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)$/.exec(reply)?.[1];
    assert.ok(id, reply);
    assert.match(await smtp.command('NOOP'), /^250 /, 'no further replies were queued by smuggled commands');
    smtp.close();
    assert.equal(await stored(system), before + 1, 'one message, not two');
    const message = await system.store.getMessage(id);
    assert.deepEqual(message?.message.recipients, ['user@example.test']);
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    assert.ok(Buffer.concat(chunks).toString('latin1').endsWith(`${smuggled}\r\n`), 'the smuggled lines are message content');
  });

  it('keeps NUL bytes in message content as they came', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    const id = /queued as ([0-9A-Z]+)/.exec(await smtp.data('Subject: nul\r\n\r\na\0b\r\n.\r\n'))?.[1];
    assert.ok(id);
    smtp.close();
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    assert.ok(Buffer.concat(chunks).toString('latin1').endsWith('Subject: nul\r\n\r\na\0b\r\n'));
  });

  it('refuses non-ASCII addresses without SMTPUTF8 (553 5.6.7), takes them with it, and keeps IDN domains in ASCII', async () => {
    const before = await stored(system);
    const smtp = await session();
    assert.equal(await smtp.data(Buffer.from('MAIL FROM:<jörg@origin.test>\r\n')), '553 5.6.7 Error: non-ASCII address without SMTPUTF8');
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.equal(await smtp.data(Buffer.from('RCPT TO:<jörg@example.test>\r\n')), '553 5.6.7 Error: non-ASCII address without SMTPUTF8');
    assert.equal(await smtp.data(Buffer.from('RCPT TO:<user@bücher.test>\r\n')), '553 5.6.7 Error: non-ASCII address without SMTPUTF8');
    assert.match(await smtp.command('RCPT TO:<user@XN--BCHER-KVA.test>'), /^250 /, 'an IDN relay domain in ASCII');
    assert.match(await smtp.command('RSET'), /^250 /);
    assert.match(await smtp.data(Buffer.from('MAIL FROM:<jörg@origin.test> SMTPUTF8\r\n')), /^250 /);
    assert.match(await smtp.data(Buffer.from('RCPT TO:<jörg@bücher.test>\r\n')), /^250 /);
    assert.match(await smtp.data(Buffer.from([...Buffer.from('RCPT TO:<x'), 0xff, ...Buffer.from('@example.test>\r\n')])), /^501 5\.1\.3 /, 'not UTF-8');
    assert.match(await smtp.command('DATA'), /^354 /);
    const id = /queued as ([0-9A-Z]+)/.exec(await smtp.data(Buffer.from('Subject: utf8\r\n\r\nhej\r\n.\r\n')))?.[1];
    assert.ok(id);
    smtp.close();
    assert.equal(await stored(system), before + 1);
    const message = await system.store.getMessage(id);
    assert.deepEqual(message?.message.recipients, ['jörg@xn--bcher-kva.test']);
  });

  it('takes 100 of 10,000 pipelined recipients (452 4.5.3 for the rest) and still delivers the message', async () => {
    const smtp = await session();
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    const replies: string[] = [];
    for (let batch = 0; batch < 10_000; batch += 500) {
      smtp.write(Array.from({ length: 500 }, (_, index) => `RCPT TO:<user${batch + index}@example.test>\r\n`).join(''));
      for (let index = 0; index < 500; index++) replies.push(await smtp.reply());
    }
    assert.equal(replies.filter((reply) => /^250 2\.1\.5 /.test(reply)).length, 100);
    assert.equal(replies.filter((reply) => reply === '452 4.5.3 Error: too many recipients').length, 9_900);
    assert.match(await smtp.command('DATA'), /^354 /);
    const id = /queued as ([0-9A-Z]+)/.exec(await smtp.data('Subject: many\r\n\r\nhi\r\n.\r\n'))?.[1];
    assert.ok(id, 'the session survived the flood');
    smtp.close();
    assert.equal((await system.store.getMessage(id))?.message.recipients.length, 100);
  });

  it('closes with 421 4.7.0 after 20 refused commands', async () => {
    const smtp = await session();
    await smtp.command('MAIL FROM:<a@origin.test>');
    for (let index = 1; index < 20; index++) assert.match(await smtp.command(`RCPT TO:<u${index}@elsewhere.test>`), /^550 5\.7\.1 /);
    assert.match(await smtp.command('RCPT TO:<u20@elsewhere.test>'), /^550 5\.7\.1 /);
    assert.equal(await smtp.reply(), '421 4.7.0 backup.example.test Error: too many errors');
    await waitFor('the connection to close', () => smtp.closed());
  });

  it('closes the connection after the 221 to QUIT, as Postfix does, without answering what came after it', async () => {
    // A client that never closes its side: the server's FIN must come anyway, right after the 221.
    const socket = connect({ port: system.port, host: '127.0.0.1', allowHalfOpen: true });
    socket.setEncoding('latin1');
    let received = '';
    socket.on('data', (data: string) => (received += data));
    const ended = new Promise((resolve) => socket.once('end', resolve));
    await waitFor('the greeting', () => received.includes('\r\n'));
    socket.write('EHLO client.origin.test\r\nQUIT\r\nNOOP\r\n');
    await ended;
    assert.match(received, /^220 [^\r]*\r\n250-[^]*\r\n221 2\.0\.0 Bye\r\n$/);
    // Well before smtp-server's own 5 s limit for a client that does not close after QUIT.
    await waitFor('the server to let go of the session', () => system.ingress.connections() === 0 && system.ingress.counted().connections === 0, 2000);
    socket.destroy();
    await assertStillServing(system);
  });

  it('drops a client that disconnects mid-DATA, stores nothing, and leaks no connection', async () => {
    const before = await stored(system);
    const smtp = await session();
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    assert.match(await smtp.command('DATA'), /^354 /);
    smtp.write(`Subject: cut\r\n\r\n${'x'.repeat(100_000)}\r\n`);
    smtp.close();
    await waitFor('the server to let go of the session', () => system.ingress.connections() === 0);
    assert.equal(await stored(system), before);
    await assertStillServing(system);
  });
});

describe('ingress: clients that talk first or stall', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '300ms', COMMAND_TIMEOUT: '1s', DATA_TIMEOUT: '1s' }, { ingress: { resolver } });
  });
  after(() => system.close());

  it('answers a client that talks before the greeting with 421 4.7.0 and closes', async () => {
    const socket = connect(system.port, '127.0.0.1');
    socket.setEncoding('latin1');
    let received = '';
    socket.on('data', (data: string) => (received += data));
    socket.write('EHLO early.origin.test\r\nMAIL FROM:<a@origin.test>\r\n');
    await new Promise((resolve) => socket.on('close', resolve));
    assert.match(received, /^421 4\.7\.0 backup\.example\.test You talk too soon\r\n$/);
    assert.equal(await stored(system), 0);
  });

  it('closes an idle session with 421 4.4.2 after COMMAND_TIMEOUT', async () => {
    const smtp = await openSession(system.port);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    assert.match(await smtp.reply(), /^421 4\.4\.2 /);
    await waitFor('the connection to close', () => smtp.closed());
  });

  it('closes a session that stalls mid-DATA with 421 4.4.2 after DATA_TIMEOUT, storing nothing', async () => {
    const smtp = await openSession(system.port);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<a@origin.test>');
    await smtp.command('RCPT TO:<user@example.test>');
    assert.match(await smtp.command('DATA'), /^354 /);
    smtp.write('Subject: stalled\r\n\r\nhalf a mess');
    assert.match(await smtp.reply(), /^421 4\.4\.2 /);
    await waitFor('the connection to close', () => smtp.closed());
    await waitFor('the server to let go of the session', () => system.ingress.connections() === 0);
    assert.equal(await stored(system), 0);
    await assertStillServing(system);
  });
});
