import assert from 'node:assert/strict';
import nodemailer from 'nodemailer';
import type { Received } from './primary.ts';

export interface Sent {
  index: number;
  from: string;
  to: string[];
  raw: string;
  /** Queue id from `250 2.0.0 Ok: queued as ID`, or null when refused. */
  id: string | null;
  reply: string;
}

/** A distinct RFC 5322 message: 8-bit text, a DKIM-like folded header, a dot-leading line. */
export function makeMessage(index: number, to: string): string {
  return [
    `From: Sender ${index} <sender${index}@origin.test>`,
    `To: <${to}>`,
    `Subject: test message ${index}`,
    `Message-ID: <m${index}.${process.pid}@origin.test>`,
    `DKIM-Signature: v=1; a=rsa-sha256; d=origin.test; s=sel;`,
    `\tbh=${Buffer.from(`body ${index}`).toString('base64')}; b=abcdef`,
    '',
    `Body of message ${index}.`,
    '.a line that starts with a dot',
    `caf\u00e9 ${'x'.repeat(index % 200)}`,
    '',
  ].join('\r\n');
}

/** Send `count` messages through a real SMTP client with `concurrency` connections. */
export async function sendMessages(port: number, count: number, options: { concurrency?: number; start?: number; to?: (index: number) => string[]; localAddress?: string } = {}): Promise<Sent[]> {
  const transport = nodemailer.createTransport({ host: '127.0.0.1', port, secure: false, ignoreTLS: true, pool: true, maxConnections: options.concurrency ?? 5, maxMessages: Infinity, ...(options.localAddress ? { localAddress: options.localAddress } : {}) });
  const start = options.start ?? 0;
  try {
    return await Promise.all(
      Array.from({ length: count }, async (_, offset) => {
        const index = start + offset;
        const to = options.to?.(index) ?? [`user${index % 7}@example.test`];
        const from = index % 10 === 9 ? '' : `sender${index}@origin.test`;
        const raw = makeMessage(index, to[0] ?? '');
        try {
          const info = await transport.sendMail({ envelope: { from, to }, raw: Buffer.from(raw, 'utf8') });
          return { index, from, to, raw, id: /queued as ([0-9A-Z]+)/.exec(info.response)?.[1] ?? null, reply: info.response };
        } catch (error) {
          return { index, from, to, raw, id: null, reply: String((error as { response?: string }).response ?? (error as Error).message) };
        }
      }),
    );
  } finally {
    transport.close();
  }
}

/** The queue id in our Received header (the first header of what the primary got). */
export function queueIdOf(message: Received): string | null {
  return /^Received: [^]*?\r\n\tby \S+ \(backupmx\) with E?SMTPS? id ([0-9A-Z]+)/.exec(message.raw.toString('latin1'))?.[1] ?? null;
}

/**
 * Every accepted message arrived at the primary with its envelope, one Received header of ours on
 * top, and the original bytes below it. Returns how many copies arrived in all.
 */
export function assertAllDelivered(sent: Sent[], received: Received[]): number {
  const byId = new Map<string, Received[]>();
  for (const message of received) {
    const id = queueIdOf(message);
    assert.ok(id, `a message without our Received header reached the primary:\n${message.raw.toString('latin1').slice(0, 200)}`);
    byId.set(id, [...(byId.get(id) ?? []), message]);
  }
  for (const message of sent) {
    assert.ok(message.id, `message ${message.index} was not accepted: ${message.reply}`);
    const copies = byId.get(message.id);
    assert.ok(copies?.length, `message ${message.index} (queue id ${message.id}) never reached the primary`);
    for (const copy of copies) {
      assert.equal(copy.from, message.from, `envelope sender of ${message.id}`);
      assert.deepEqual(copy.to, message.to, `envelope recipients of ${message.id}`);
      const text = copy.raw.toString('utf8');
      const headerEnd = text.indexOf('\r\n', text.indexOf(`id ${message.id}`));
      // Below our Received header: our Authentication-Results (sender authentication), then the original.
      const afterReceived = text.slice(text.indexOf('\r\n', headerEnd + 2) + 2).replace(/^Authentication-Results: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n/, '');
      assert.equal(afterReceived, message.raw, `bytes below our Received header of ${message.id}`);
    }
  }
  return received.length;
}
