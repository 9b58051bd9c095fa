import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { after, before, describe, it } from 'node:test';
import { text } from 'node:stream/consumers';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession } from './support/smtp-session.ts';

// Ingress holds a large message in one buffer of the size declared in MAIL FROM (message-reader.ts):
// whatever the client declares, the stored message is our header fields and then exactly the bytes sent.

const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
type System = Awaited<ReturnType<typeof startIngressWithSpool>>;

/** About `bytes` bytes of message, with lines that start with a dot (sent dot-stuffed). */
function message(subject: string, bytes: number): string {
  const line = `${'y'.repeat(70)}\r\n.dot line\r\n`;
  return `Subject: ${subject}\r\nMessage-ID: <${subject.replace(/ /g, '-')}@origin.test>\r\n\r\n${line.repeat(Math.ceil(bytes / line.length))}`;
}

async function send(port: number, mailFrom: string, raw: string): Promise<string> {
  const smtp = await openSession(port);
  try {
    await smtp.command('EHLO client.origin.test');
    assert.match(await smtp.command(mailFrom), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
    assert.match(await smtp.command('DATA'), /^354 /);
    const stuffed = raw.replace(/^\./gm, '..');
    const reply = await smtp.data(Buffer.from(`${stuffed}.\r\n`, 'latin1'));
    assert.match(reply, /^250 2\.0\.0 Ok: queued as /);
    return reply.slice(reply.lastIndexOf(' ') + 1);
  } finally {
    smtp.close();
  }
}

describe('large messages through ingress, whatever SIZE the client declares', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', SENDER_AUTH: 'false' }, { ingress: { resolver } });
  });
  after(() => system.close());

  const size = 3 * 1024 * 1024;
  const cases = [
    ['its exact size', (raw: string) => `SIZE=${raw.length}`],
    ['less than it sends (the message outgrows the buffer)', (raw: string) => `SIZE=${Math.floor(raw.length / 3)}`],
    ['far more than it sends', () => `SIZE=${20 * 1024 * 1024}`],
    ['no SIZE', () => ''],
  ] as const;
  for (const [what, declare] of cases) {
    it(`stores our fields and the sender's bytes exactly when it declares ${what}`, async () => {
      const raw = message(`large ${what}`, size);
      const id = await send(system.port, `MAIL FROM:<a@origin.test> ${declare(raw)}`.trim(), raw);
      const stored = await text(await system.store.readBody(id));
      assert.match(stored, /^Received: from client\.origin\.test /);
      assert.ok(stored.endsWith(raw), 'the message as sent, dot-unstuffed, behind our fields');
      assert.ok(stored.length - raw.length < 2000, `only our fields in front (${stored.length - raw.length} bytes)`);
    });
  }
});
