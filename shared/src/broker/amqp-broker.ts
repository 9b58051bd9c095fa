import { Buffer } from 'node:buffer';
import { setTimeout as sleep } from 'node:timers/promises';
import amqp, { type Channel, type ChannelModel, type ConfirmChannel, type ConsumeMessage } from 'amqplib';
import { boundContentCopies, CHANNEL_FRAMES } from './amqp-content.ts';
import { createAmqpDeadLetters } from './amqp-dead-letters.ts';
import { TOPOLOGY, type Broker, type EventKey, type EventPayload, type MailDisposition } from './broker.ts';
import type { Logger } from '../runtime/logger.ts';
import { brokerReconnects, messagesDeadLettered } from '../runtime/metrics.ts';
import { bodyReleased } from '../runtime/young-gc.ts';
import type { Envelope, ReceivedMail } from '../types.ts';

export interface AmqpOptions {
  url: string;
  /** User and password as they are, instead of the URL's (which must be percent-encoded there). */
  credentials?: { user: string; password: string };
  /** Shown in RabbitMQ's connection list. */
  name: string;
  /** How long publishMail waits for the publisher confirm. */
  confirmTimeoutMs: number;
  log: Logger;
}

/** Declared by every connection, so that whichever service starts first sets the topology up. */
async function declareTopology(channel: Channel): Promise<void> {
  await channel.assertExchange(TOPOLOGY.mailExchange, 'topic', { durable: true });
  await channel.assertExchange(TOPOLOGY.eventsExchange, 'topic', { durable: true });
  await channel.assertQueue(TOPOLOGY.deadQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
  await channel.assertQueue(TOPOLOGY.spoolQueue, {
    durable: true,
    arguments: {
      'x-queue-type': 'quorum',
      'x-delivery-limit': TOPOLOGY.deliveryLimit,
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': TOPOLOGY.deadQueue,
    },
  });
  await channel.bindQueue(TOPOLOGY.spoolQueue, TOPOLOGY.mailExchange, TOPOLOGY.mailReceived);
}

/** The envelope and trace context travel in AMQP headers; the body is the raw message. */
export function encodeMailHeaders(mail: ReceivedMail): Record<string, string | number> {
  return { 'x-envelope': JSON.stringify(mail.envelope), 'x-received-at': mail.receivedAt, ...mail.trace };
}

export function decodeMail(message: Pick<ConsumeMessage, 'content' | 'properties'>): ReceivedMail {
  const { messageId, headers = {} } = message.properties;
  if (typeof messageId !== 'string' || messageId === '') throw new Error('no messageId');
  const envelope = JSON.parse(String(headers['x-envelope'])) as Envelope;
  if (typeof envelope?.mailFrom !== 'string' || !Array.isArray(envelope.rcptTo) || envelope.rcptTo.length === 0) {
    throw new Error('bad x-envelope header');
  }
  const trace: Record<string, string> = {};
  for (const key of ['traceparent', 'tracestate']) if (typeof headers[key] === 'string') trace[key] = headers[key];
  return {
    id: messageId,
    // The whole envelope travels (DSN parameters, client); only its two required fields are checked.
    envelope: { ...envelope, rcptTo: envelope.rcptTo.map(String) },
    // amqplib's content is a Buffer of its own (joined from the frames): used as it is, not copied again.
    body: message.content,
    receivedAt: Number(headers['x-received-at']) || Date.now(),
    trace,
  };
}

/**
 * RabbitMQ with a connection that heals itself: reconnects with backoff (0.5 s doubling to 10 s),
 * re-declares the topology and re-attaches every consumer and subscription. While it is down,
 * publishMail rejects at once so ingress can answer 451.
 */
export function createAmqpBroker(options: AmqpOptions): Broker & { start(): Promise<void> } {
  boundContentCopies(); // a large message's body held once, sent or received, not once more as frames
  const { log } = options;
  let connection: ChannelModel | null = null;
  let publisher: ConfirmChannel | null = null;
  let closing = false;
  const closed = new AbortController();
  let reconnecting: Promise<void> | null = null;
  let everConnected = false;
  const returned = new Set<string>();
  /** Re-run on every (re)connection. */
  const attachments: Array<(conn: ChannelModel) => Promise<void>> = [];
  const consumers: Array<{ channel: Channel; tag: string }> = [];
  const inFlight = new Set<Promise<void>>();

  async function connectOnce(): Promise<void> {
    const credentials = options.credentials ? { credentials: amqp.credentials.plain(options.credentials.user, options.credentials.password) } : {};
    const conn = await amqp.connect(options.url, { timeout: 5000, clientProperties: { connection_name: options.name }, ...credentials });
    conn.on('error', (error: Error) => log.warn({ err: error }, 'amqp connection error'));
    conn.on('close', () => {
      if (connection !== conn) return;
      connection = null;
      publisher = null;
      consumers.length = 0;
      if (!closing) {
        log.warn('amqp connection lost; reconnecting');
        void reconnect();
      }
    });
    try {
      // A high-water mark of a few frames: a large body is framed as the socket takes it (amqp-content.ts).
      // amqplib takes the option; its type declarations do not have it.
      const createConfirmChannel = conn.createConfirmChannel as (this: ChannelModel, options: { highWaterMark: number }) => Promise<ConfirmChannel>;
      const channel = await createConfirmChannel.call(conn, { highWaterMark: CHANNEL_FRAMES });
      channel.on('error', (error: Error) => log.warn({ err: error }, 'amqp channel error'));
      channel.on('return', (message: ConsumeMessage) => {
        if (typeof message.properties.messageId === 'string') returned.add(message.properties.messageId);
      });
      // Any channel that closes on an error takes the connection down, so everything is rebuilt together.
      channel.on('close', () => void conn.close().catch(() => {}));
      await declareTopology(channel);
      connection = conn;
      for (const attach of attachments) await attach(conn);
      publisher = channel;
      if (everConnected) brokerReconnects.inc();
      everConnected = true;
      log.info({ name: options.name }, 'amqp connected');
    } catch (error) {
      await conn.close().catch(() => {});
      throw error;
    }
  }

  function reconnect(): Promise<void> {
    reconnecting ??= (async () => {
      let delay = 500;
      while (!closing && !publisher) {
        try {
          await connectOnce();
        } catch (error) {
          log.warn({ err: error, retryInMs: delay }, 'amqp connect failed');
          await sleep(delay);
          delay = Math.min(delay * 2, 10_000);
        }
      }
    })().finally(() => {
      reconnecting = null;
    });
    return reconnecting;
  }

  async function attach(setup: (conn: ChannelModel) => Promise<void>): Promise<void> {
    attachments.push(setup);
    if (connection) await setup(connection);
  }

  async function openChannel(conn: ChannelModel): Promise<Channel> {
    const channel = await conn.createChannel();
    channel.on('error', (error: Error) => log.warn({ err: error }, 'amqp channel error'));
    channel.on('close', () => void conn.close().catch(() => {}));
    return channel;
  }

  return {
    async start() {
      // Do not block start-up on the broker: the service runs (and answers 451) until it is reachable.
      void reconnect();
    },

    publishMail(mail) {
      const channel = publisher;
      if (!channel) return Promise.reject(new Error('message broker is not connected'));
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no publisher confirm within ${options.confirmTimeoutMs} ms`)), options.confirmTimeoutMs);
        try {
          channel.publish(
            TOPOLOGY.mailExchange,
            TOPOLOGY.mailReceived,
            mail.body,
            {
              persistent: true,
              mandatory: true,
              messageId: mail.id,
              timestamp: Math.floor(mail.receivedAt / 1000),
              contentType: 'message/rfc822',
              headers: encodeMailHeaders(mail),
            },
            (error) => {
              clearTimeout(timer);
              // A mandatory message nobody could take comes back (basic.return) before its ack.
              if (returned.delete(mail.id)) reject(new Error('message was not routable to the spool queue'));
              else if (error) reject(error instanceof Error ? error : new Error(String(error)));
              else resolve();
            },
          );
        } catch (error) {
          clearTimeout(timer);
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      });
    },

    async consumeMail(handler, prefetch) {
      await attach(async (conn) => {
        const channel = await openChannel(conn);
        await channel.prefetch(prefetch);
        const { consumerTag } = await channel.consume(TOPOLOGY.spoolQueue, (message) => {
          if (!message) return;
          const work = (async () => {
            let mail: ReceivedMail;
            try {
              mail = decodeMail(message);
            } catch (error) {
              log.error({ err: error, queueId: message.properties.messageId }, 'undecodable message; dead-lettering');
              messagesDeadLettered.inc();
              channel.nack(message, false, false);
              return;
            }
            // A handler that fails (the store is down) keeps the message and tries again rather than
            // handing it back: before RabbitMQ 4.3 every return counts toward the queue's delivery
            // limit, and a long store outage would dead-letter good mail. On close, the channel
            // returns whatever is still held.
            let disposition: MailDisposition | null = null;
            for (let delay = 1000; disposition === null; delay = Math.min(delay * 2, 30_000)) {
              try {
                disposition = await handler(mail);
              } catch (error) {
                if (closing) return;
                log.warn({ err: error, queueId: mail.id, retryInMs: delay }, 'message not stored yet; retrying');
                await sleep(delay, undefined, { signal: closed.signal }).catch(() => {});
                if (closing) return;
              }
            }
            if (disposition === 'stored') channel.ack(message);
            else channel.nack(message, false, false);
            bodyReleased(message.content.length); // a large one: freed now, not when V8's heap next fills
          })().catch((error: unknown) => log.warn({ err: error }, 'could not settle a delivery; RabbitMQ will redeliver it'));
          inFlight.add(work);
          void work.finally(() => inFlight.delete(work));
        });
        consumers.push({ channel, tag: consumerTag });
      });
    },

    publishEvent(key, payload) {
      const channel = publisher;
      if (!channel) {
        log.debug({ key }, 'event not published: broker not connected');
        return;
      }
      try {
        channel.publish(TOPOLOGY.eventsExchange, key, Buffer.from(JSON.stringify(payload)), { contentType: 'application/json' }, () => {});
      } catch (error) {
        log.debug({ err: error, key }, 'event not published');
      }
    },

    async subscribe(keys, handler) {
      await attach(async (conn) => {
        const channel = await openChannel(conn);
        const { queue } = await channel.assertQueue('', { exclusive: true, autoDelete: true });
        for (const key of keys) await channel.bindQueue(queue, TOPOLOGY.eventsExchange, key);
        await channel.consume(
          queue,
          (message) => {
            if (!message) return;
            try {
              handler(message.fields.routingKey as EventKey, JSON.parse(message.content.toString('utf8')) as EventPayload);
            } catch (error) {
              log.warn({ err: error, key: message.fields.routingKey }, 'bad event ignored');
            }
          },
          { noAck: true },
        );
      });
    },

    connected: () => publisher !== null,

    dead: createAmqpDeadLetters(() => connection, log),

    async close() {
      closing = true;
      closed.abort();
      for (const { channel, tag } of consumers) await channel.cancel(tag).catch(() => {});
      await Promise.allSettled([...inFlight]);
      const conn = connection;
      connection = null;
      publisher = null;
      await conn?.close().catch(() => {});
    },
  };
}
