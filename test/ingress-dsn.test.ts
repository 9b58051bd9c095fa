import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startSystem, type System } from './support/dsn-peers.ts';
import { openSession } from './support/smtp-session.ts';

/** RFC 3461 on the way in: DSN advertised, RET/ENVID/NOTIFY/ORCPT checked (501 5.5.4) and kept. */
describe('ingress: DSN parameters', () => {
  let system: System;
  before(async () => {
    system = await startSystem({ PRIMARY: '127.0.0.1:1' }, { deliver: false });
  });
  after(async () => system.close());

  const cases: [string, string, string][] = [
    ['a duplicate RET', 'MAIL FROM:<a@origin.test> RET=FULL RET=HDRS', 'RCPT'],
    ['a bad RET', 'MAIL FROM:<a@origin.test> RET=BODY', 'RCPT'],
    ['a RET without a value', 'MAIL FROM:<a@origin.test> RET', 'RCPT'],
    ['an ENVID over 100 characters', `MAIL FROM:<a@origin.test> ENVID=${'x'.repeat(101)}`, 'RCPT'],
    ['a duplicate NOTIFY', 'RCPT TO:<u@example.test> NOTIFY=SUCCESS NOTIFY=FAILURE', 'MAIL'],
    ['NOTIFY=NEVER with another value', 'RCPT TO:<u@example.test> NOTIFY=NEVER,SUCCESS', 'MAIL'],
    ['an unknown NOTIFY value', 'RCPT TO:<u@example.test> NOTIFY=ALWAYS', 'MAIL'],
    ['an ORCPT without an address type', 'RCPT TO:<u@example.test> ORCPT=u@example.test', 'MAIL'],
    ['a duplicate ORCPT', 'RCPT TO:<u@example.test> ORCPT=rfc822;a@example.test ORCPT=rfc822;b@example.test', 'MAIL'],
    ['an ORCPT over 500 characters', `RCPT TO:<u@example.test> ORCPT=rfc822;${'x'.repeat(500)}@example.test`, 'MAIL'],
  ];

  for (const [what, command, needs] of cases) {
    it(`answers 501 5.5.4 to ${what}, and stores nothing`, async () => {
      const session = await openSession(system.port);
      try {
        const ehlo = await session.commandLines('EHLO client.origin.test');
        assert.ok(ehlo.includes('250-DSN') || ehlo.includes('250 DSN'), `DSN is advertised: ${ehlo.join(' | ')}`);
        if (needs === 'MAIL') assert.match(await session.command('MAIL FROM:<a@origin.test>'), /^250 /);
        assert.match(await session.command(command), /^501 5\.5\.4 /);
        // The transaction goes on (or starts) normally after the refusal; nothing is queued.
        if (needs === 'RCPT') {
          assert.match(await session.command('MAIL FROM:<a@origin.test>'), /^250 /);
        }
        assert.match(await session.command('RCPT TO:<u@example.test>'), /^250 /);
        await session.command('RSET');
      } finally {
        session.close();
      }
      assert.equal((await system.store.list({})).total, 0, 'nothing stored');
    });
  }
});

describe('ingress: parameters we do not offer', () => {
  let system: System;
  before(async () => {
    system = await startSystem({ PRIMARY: '127.0.0.1:1' }, { deliver: false });
  });
  after(async () => system.close());

  it('answers 555 5.5.4 naming the option (as Postfix), and the session goes on', async () => {
    const session = await openSession(system.port);
    try {
      await session.command('EHLO client.origin.test');
      assert.equal(await session.command('MAIL FROM:<a@origin.test> FOO=bar'), '555 5.5.4 Unsupported option: FOO=bar');
      assert.equal(await session.command('MAIL FROM:<a@origin.test> NOTIFY=NEVER'), '555 5.5.4 Unsupported option: NOTIFY=NEVER');
      assert.equal(await session.command('MAIL FROM:<a@origin.test> AUTH=<>'), '555 5.5.4 Unsupported option: AUTH=<>');
      assert.match(await session.command('MAIL FROM:<a@origin.test> SIZE=100 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x'), /^250 /);
      assert.equal(await session.command('RCPT TO:<u@example.test> RET=FULL'), '555 5.5.4 Unsupported option: RET=FULL');
      assert.equal(await session.command('RCPT TO:<u@example.test> XFOO'), '555 5.5.4 Unsupported option: XFOO');
      assert.match(await session.command('RCPT TO:<u@example.test> NOTIFY=SUCCESS ORCPT=rfc822;u@example.test'), /^250 /);
      await session.command('RSET');
    } finally {
      session.close();
    }
    assert.equal((await system.store.list({})).total, 0, 'nothing stored');
  });

  it('does not lend BODY or SMTPUTF8 of a refused MAIL FROM to the next one', async () => {
    const session = await openSession(system.port);
    try {
      await session.command('EHLO client.origin.test');
      assert.match(await session.command('MAIL FROM:<a@origin.test> BODY=8BITMIME SMTPUTF8 FOO=bar'), /^555 5\.5\.4 /);
      assert.match(await session.command('MAIL FROM:<a@origin.test>'), /^250 /);
      assert.equal(await session.command('RCPT TO:<\u00fc@example.test>'), '553 5.6.7 Error: non-ASCII address without SMTPUTF8');
      assert.match(await session.command('RCPT TO:<u@example.test>'), /^250 /);
      assert.match(await session.command('DATA'), /^354 /);
      assert.match(await session.data('Subject: plain\r\n\r\nascii\r\n.\r\n'), /^250 2\.0\.0 /);
    } finally {
      session.close();
    }
    const { items } = await system.store.list({});
    assert.equal(items.length, 1);
    assert.equal(items[0]?.message.envelope.body8bit, undefined);
    assert.equal(items[0]?.message.envelope.smtputf8, undefined);
  });
});

describe('ingress: DSN parameters of a refused MAIL FROM', () => {
  let system: System;
  before(async () => {
    system = await startSystem({ PRIMARY: '127.0.0.1:1' }, { deliver: false });
  });
  after(async () => system.close());

  it('are not kept for the next MAIL FROM: the message is stored with that one\'s RET and ENVID only', async () => {
    const session = await openSession(system.port);
    let final: string;
    try {
      await session.commandLines('EHLO client.origin.test');
      assert.match(await session.command(`MAIL FROM:<a@origin.test> RET=FULL ENVID=${'x'.repeat(101)}`), /^501 5\.5\.4 /);
      assert.match(await session.command('MAIL FROM:<a@origin.test>'), /^250 /);
      assert.match(await session.command('RCPT TO:<u@example.test>'), /^250 /);
      assert.match(await session.command('DATA'), /^354 /);
      final = await session.data('Subject: after a refused MAIL\r\n\r\nHello.\r\n.\r\n');
      await session.command('QUIT');
    } finally {
      session.close();
    }
    const id = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)/.exec(final)?.[1];
    assert.ok(id, final);
    const stored = await system.store.getMessage(id);
    assert.deepEqual({ ret: stored?.message.envelope.ret, envid: stored?.message.envelope.envid }, { ret: undefined, envid: undefined }, 'nothing of the refused command is passed on');
  });
});
