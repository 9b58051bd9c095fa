import assert from 'node:assert/strict';
import type { Buffer } from 'node:buffer';
import { simpleParser, type ParsedMail } from 'mailparser';
import { openSession } from './smtp-session.ts';

export interface ParsedReport {
  mail: ParsedMail;
  /** The readable part. */
  text: string;
  /** Per-message fields of the message/delivery-status part, names in lower case. */
  fields: Record<string, string>;
  /** One record per recipient block, names in lower case. */
  recipients: Record<string, string>[];
  /** The third part: its content type and text. */
  returned: { contentType: string; content: string };
}

/** Unfold and split `Name: value` lines; blocks are separated by empty lines. */
export function parseFieldBlocks(text: string): Record<string, string>[] {
  return text
    .replace(/\r\n/g, '\n')
    .replace(/\n[ \t]+/g, ' ')
    .split(/\n\s*\n/)
    .map((block) => block.trim())
    .filter((block) => block !== '')
    .map((block) => {
      const record: Record<string, string> = {};
      for (const line of block.split('\n')) {
        const colon = line.indexOf(':');
        assert.ok(colon > 0, `not a field: ${JSON.stringify(line)}`);
        const name = line.slice(0, colon).trim().toLowerCase();
        assert.ok(!(name in record), `field ${name} given twice in one block`);
        record[name] = line.slice(colon + 1).trim();
      }
      return record;
    });
}

/** Parse a delivery report with mailparser and check its MIME shape (RFC 3464 / RFC 6522). */
export async function parseReport(raw: Buffer): Promise<ParsedReport> {
  const mail = await simpleParser(raw, { keepDeliveryStatus: true, skipTextToHtml: true, skipHtmlToText: true, skipImageLinks: true });
  const type = mail.headers.get('content-type') as { value: string; params: Record<string, string> };
  assert.equal(type.value, 'multipart/report');
  assert.equal(type.params['report-type'], 'delivery-status');
  const status = mail.attachments.find((part) => part.contentType === 'message/delivery-status');
  assert.ok(status, `a message/delivery-status part (parts: ${mail.attachments.map((part) => part.contentType).join(', ')})`);
  const returned = mail.attachments.find((part) => part.contentType === 'text/rfc822-headers' || part.contentType === 'message/rfc822');
  assert.ok(returned, 'the original message or its headers are attached');
  const [fields, ...recipients] = parseFieldBlocks(status.content.toString('utf8'));
  assert.ok(fields);
  return { mail, text: mail.text ?? '', fields, recipients, returned: { contentType: returned.contentType, content: returned.content.toString('utf8') } };
}

/** A valid RFC 5322 date within `slackMs` of `around`. */
export function assertDateNear(value: string | undefined, around: number, slackMs = 5000, what = 'date'): void {
  assert.ok(value, `${what} is present`);
  assert.match(value, /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}$/, `${what} is an RFC 5322 date: ${value}`);
  const ms = Date.parse(value);
  assert.ok(Math.abs(ms - around) <= slackMs, `${what} ${value} is near ${new Date(around).toISOString()}`);
}

export interface RawRcpt {
  address: string;
  params?: string;
}

/**
 * One SMTP transaction with exact parameters (nodemailer can only give every recipient the same
 * DSN parameters). Returns every reply; `id` is the queue id when the message was accepted.
 */
export async function sendRaw(port: number, mail: { from: string; params?: string; rcpts: RawRcpt[]; message: string }) {
  const session = await openSession(port);
  try {
    const ehlo = await session.commandLines('EHLO client.origin.test');
    const mailReply = await session.command(`MAIL FROM:<${mail.from}>${mail.params ? ` ${mail.params}` : ''}`);
    const rcptReplies: string[] = [];
    for (const rcpt of mail.rcpts) rcptReplies.push(await session.command(`RCPT TO:<${rcpt.address}>${rcpt.params ? ` ${rcpt.params}` : ''}`));
    const dataStart = await session.command('DATA');
    const final = dataStart.startsWith('354') ? await session.data(`${mail.message.replace(/\r?\n/g, '\r\n').replace(/\r\n$/, '')}\r\n.\r\n`) : dataStart;
    await session.command('QUIT');
    return { ehlo, mailReply, rcptReplies, final, id: /queued as ([0-9A-Z]+)/.exec(final)?.[1] ?? null };
  } finally {
    session.close();
  }
}
