import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession } from './support/smtp-session.ts';
import { waitFor } from './support/util.ts';

const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
type System = Awaited<ReturnType<typeof startIngressWithSpool>>;

/** A message body of about `bytes` bytes in 76-character lines. */
function body(subject: string, bytes: number): string {
  const line = `${'x'.repeat(76)}\r\n`;
  return `Subject: ${subject}\r\n\r\n${line.repeat(Math.ceil(bytes / line.length))}`;
}

async function startTransaction(port: number, mailFrom = 'MAIL FROM:<a@origin.test>') {
  const smtp = await openSession(port);
  await smtp.command('EHLO client.origin.test');
  const mail = await smtp.command(mailFrom);
  if (!mail.startsWith('250')) return { smtp, mail };
  assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
  assert.match(await smtp.command('DATA'), /^354 /);
  return { smtp, mail };
}

describe('ingress: MEMORY_BUDGET', () => {
  let system: System;
  before(async () => {
    // Room for one message of 200 KB in memory at a time, not two.
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', SENDER_AUTH: 'false', MAX_MESSAGE_SIZE: '300000', MEMORY_BUDGET: '300000' }, { ingress: { resolver } });
  });
  after(() => system.close());

  it('answers 452 4.3.1 to a DATA that would exceed it while a small message still gets 250, and stores nothing of the refused one', async () => {
    // A sender in the middle of a 200 KB message: its bytes are held until its final dot.
    const big = await startTransaction(system.port);
    big.smtp.write(body('first', 200_000));
    await waitFor('the first message held in memory', () => system.ingress.messageBytesHeld() >= 200_000);

    // A second 200 KB message does not fit beside it: 452 4.3.1, and its bytes are given back.
    const second = await startTransaction(system.port);
    assert.equal(await second.smtp.data(`${body('second', 200_000)}.\r\n`), '452 4.3.1 Insufficient system storage');
    assert.ok(system.ingress.messageBytesHeld() < 300_000);

    // A declared SIZE that does not fit is refused at MAIL, before any data.
    const declared = await startTransaction(system.port, 'MAIL FROM:<a@origin.test> SIZE=200000');
    assert.equal(declared.mail, '452 4.3.1 Insufficient system storage');

    // A small message fits beside the first one.
    const small = await startTransaction(system.port);
    assert.match(await small.smtp.data(`${body('small', 2_000)}.\r\n`), /^250 2\.0\.0 Ok: queued as /);

    // The first one completes; then the budget is free again and the refused sender's retry is taken.
    assert.match(await big.smtp.data('.\r\n'), /^250 2\.0\.0 /);
    assert.equal(system.ingress.messageBytesHeld(), 0);
    assert.match(await second.smtp.command('RSET'), /^250 /);
    await second.smtp.command('MAIL FROM:<a@origin.test> SIZE=200000');
    await second.smtp.command('RCPT TO:<user@example.test>');
    await second.smtp.command('DATA');
    assert.match(await second.smtp.data(`${body('second again', 200_000)}.\r\n`), /^250 2\.0\.0 /);

    const { total, items } = await system.store.list({ limit: 10, order: 'oldest' });
    assert.equal(total, 3, 'the small one, the first one, the retried second: nothing of the refused attempt');
    const sizes = items.map((item) => item.message.size);
    assert.ok(sizes.every((size) => size > 0));
    for (const smtp of [big.smtp, second.smtp, declared.smtp, small.smtp]) smtp.close();
  });
});
