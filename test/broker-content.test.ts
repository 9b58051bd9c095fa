/**
 * Message bodies through RabbitMQ, byte for byte, whatever their size against AMQP's frames (128 KiB
 * each): the consumer assembles a body of many frames into one buffer as they come
 * (shared/src/broker/amqp-content.ts), so every size around a frame boundary is tried, with events
 * (single-frame messages) published on other channels meanwhile.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { createAmqpBroker } from '../shared/src/broker/amqp-broker.ts';
import type { ReceivedMail } from '../shared/src/types.ts';
import { createVhost } from './support/rabbitmq.ts';
import { waitFor } from './support/util.ts';

/** amqplib's default frame size, less the 8 bytes of a frame's header and end. */
const FRAME_BODY = 131_072 - 8;

describe('RabbitMQ: message bodies of any size arrive byte for byte', () => {
  const vhost = createVhost();
  const log = pino({ level: 'silent' });
  const publisher = createAmqpBroker({ url: vhost.url, name: 'content-publisher', confirmTimeoutMs: 30_000, log });
  const consumer = createAmqpBroker({ url: vhost.url, name: 'content-consumer', confirmTimeoutMs: 30_000, log });
  const received = new Map<string, Buffer>();
  let events = 0;

  before(async () => {
    await publisher.start();
    await consumer.start();
    await waitFor('RabbitMQ', () => publisher.connected() && consumer.connected(), 30_000);
    await consumer.subscribe(['primary.status'], () => void events++);
    await consumer.consumeMail(async (mail: ReceivedMail) => {
      received.set(mail.id, mail.body);
      return 'stored';
    }, 4);
  });

  after(async () => {
    await publisher.close();
    await consumer.close();
    vhost.remove();
  });

  it('from one byte to 3 MiB, frame boundaries included, several at once', async () => {
    const sizes = [1, 4096, FRAME_BODY - 1, FRAME_BODY, FRAME_BODY + 1, 2 * FRAME_BODY, 2 * FRAME_BODY + 7, 3 * 1024 * 1024];
    const sent = new Map<string, Buffer>();
    const ticker = setInterval(() => publisher.publishEvent('primary.status', { target: 't', state: 'up', at: Date.now() } as never), 5);
    try {
      await Promise.all(
        sizes.map((size, index) => {
          const id = `CONTENT${String(index).padStart(3, '0')}`;
          const body = Buffer.concat([Buffer.from(`Subject: ${size}\r\n\r\n`), randomBytes(size)]);
          sent.set(id, body);
          return publisher.publishMail({ id, envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] }, body, receivedAt: Date.now() });
        }),
      );
      await waitFor('every message consumed', () => received.size >= sizes.length, 60_000);
    } finally {
      clearInterval(ticker);
    }
    for (const [id, body] of sent) assert.ok(received.get(id)?.equals(body), `${id} (${body.length} bytes) arrived as sent`);
    assert.ok(events > 0, 'events flowed meanwhile');
  });
});
