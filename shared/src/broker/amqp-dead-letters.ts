import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { ChannelModel, GetMessage, Options } from 'amqplib';
import { TOPOLOGY, type DeadLetter, type DeadLetters } from './broker.ts';
import type { Logger } from '../runtime/logger.ts';

const DEAD_AT = 'x-backupmx-dead-at';
const DEAD_REASON = 'x-backupmx-dead-reason';
/** Headers RabbitMQ (or we) add when dead-lettering; dropped when a message is replayed. */
const DEATH_HEADER = /^x-(death|first-death-|last-death-|backupmx-dead-)/;

type Headers = Record<string, unknown>;

function deathTime(headers: Headers): number | null {
  if (typeof headers[DEAD_AT] === 'number') return headers[DEAD_AT];
  const death = Array.isArray(headers['x-death']) ? (headers['x-death'][0] as Headers | undefined) : undefined;
  const time = death?.time;
  if (typeof time === 'number') return time * 1000;
  if (time instanceof Date) return time.getTime();
  return null;
}

/** What the admin API shows of one message of the dead-letter queue. */
export function describeDeadLetter(message: Pick<GetMessage, 'content' | 'properties'>): DeadLetter {
  const headers: Headers = message.properties.headers ?? {};
  const { messageId } = message.properties;
  let envelope: DeadLetter['envelope'] = null;
  try {
    const parsed = JSON.parse(String(headers['x-envelope'])) as { mailFrom?: unknown; rcptTo?: unknown };
    if (typeof parsed.mailFrom === 'string' && Array.isArray(parsed.rcptTo)) envelope = { mailFrom: parsed.mailFrom, rcptTo: parsed.rcptTo.map(String) };
  } catch {
    // shown as null: that may be why it is here
  }
  const reason = headers[DEAD_REASON] ?? headers['x-first-death-reason'];
  const receivedAt = Number(headers['x-received-at']);
  return {
    id: typeof messageId === 'string' && messageId !== '' ? messageId : `sha256:${createHash('sha256').update(message.content).digest('hex').slice(0, 32)}`,
    envelope,
    size: message.content.length,
    receivedAt: Number.isFinite(receivedAt) && receivedAt > 0 ? receivedAt : null,
    deadAt: deathTime(headers),
    reason: typeof reason === 'string' ? reason : reason instanceof Buffer ? reason.toString() : null,
  };
}

/** Publish options carrying the message's own properties. */
function optionsOf(message: GetMessage, headers: Headers): Options.Publish {
  const options: Record<string, unknown> = { ...message.properties, headers };
  for (const key of Object.keys(options)) if (options[key] === undefined) delete options[key];
  return options as Options.Publish;
}

/**
 * The dead-letter queue `backupmx.dead` of RabbitMQ. Nothing consumes it; listing and replaying take
 * its messages one at a time (basic.get) and put every message not replayed back at its tail as a
 * fresh copy (published with a confirm before the original is acknowledged), so they are never
 * lost and never run into a quorum queue's delivery limit. Operations run one at a time.
 */
export function createAmqpDeadLetters(connection: () => ChannelModel | null, log: Logger): DeadLetters {
  let queue: Promise<unknown> = Promise.resolve();
  const serial = <T>(work: () => Promise<T>): Promise<T> => {
    const run = queue.then(work, work);
    queue = run.catch(() => {});
    return run;
  };

  /** Visit up to `max` messages from the head; `replay(letter)` decides which go back to mail.received. */
  async function sweep(max: (total: number) => number, replay: (letter: DeadLetter) => boolean): Promise<number> {
    const conn = connection();
    if (!conn) throw new Error('message broker is not connected');
    const channel = await conn.createConfirmChannel();
    channel.on('error', (error: Error) => log.warn({ err: error }, 'dead-letter channel error'));
    try {
      const { messageCount } = await channel.checkQueue(TOPOLOGY.deadQueue);
      const count = Math.min(messageCount, max(messageCount));
      for (let index = 0; index < count; index += 1) {
        const message = await channel.get(TOPOLOGY.deadQueue, { noAck: false });
        if (!message) break;
        const letter = describeDeadLetter(message);
        const verdict = replay(letter);
        const headers: Headers = { ...(message.properties.headers ?? {}) };
        if (verdict) {
          for (const key of Object.keys(headers)) if (DEATH_HEADER.test(key)) delete headers[key];
          channel.publish(TOPOLOGY.mailExchange, TOPOLOGY.mailReceived, message.content, optionsOf(message, headers));
        } else {
          // Keep what RabbitMQ said about its death once the x-death header is gone with the copy.
          if (letter.deadAt !== null) headers[DEAD_AT] = letter.deadAt;
          if (letter.reason !== null) headers[DEAD_REASON] = letter.reason;
          channel.publish('', TOPOLOGY.deadQueue, message.content, optionsOf(message, headers));
        }
        await channel.waitForConfirms();
        channel.ack(message);
        if (verdict) log.info({ queueId: letter.id }, 'dead letter replayed');
        if (verdict) break;
      }
      return messageCount;
    } finally {
      await channel.close().catch(() => {});
    }
  }

  return {
    list: (limit) =>
      serial(async () => {
        const items: DeadLetter[] = [];
        const total = await sweep(
          () => limit,
          (letter) => {
            items.push(letter);
            return false;
          },
        );
        items.sort((a, b) => (a.deadAt ?? 0) - (b.deadAt ?? 0));
        return { total, items };
      }),
    replay: (id) =>
      serial(async () => {
        let found = false;
        await sweep(
          (total) => total,
          (letter) => (found = letter.id === id),
        );
        return found;
      }),
  };
}
