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
