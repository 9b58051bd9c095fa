import { mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import type { Broker, EventKey, EventPayload, MailDisposition } from './broker.ts';
import { createFileDeadLetters } from './file-dead-letters.ts';
import type { Logger } from '../runtime/logger.ts';
import type { ReceivedMail } from '../types.ts';

/**
 * The in-process broker of the single-process mode. publishMail "confirms" only after the spool's
 * handler has stored the message, so a 250 still means stored. Mail the handler cannot understand
 * is written to DATA_DIR/dead (the counterpart of RabbitMQ's dead-letter queue), never dropped.
 */
export function createMemoryBroker(deadDir: string, log: Logger): Broker {
  let mailHandler: ((mail: ReceivedMail) => Promise<MailDisposition>) | null = null;
  const subscribers: Array<{ keys: Set<EventKey>; handler: (key: EventKey, payload: EventPayload) => void }> = [];
  const inFlight = new Set<Promise<unknown>>();
  let closed = false;

  function deadLetter(mail: ReceivedMail): void {
    mkdirSync(deadDir, { recursive: true });
    const base = join(deadDir, mail.id);
    writeFileSync(`${base}.tmp`, mail.body);
    writeFileSync(`${base}.json`, JSON.stringify({ id: mail.id, envelope: mail.envelope, receivedAt: mail.receivedAt }));
    renameSync(`${base}.tmp`, `${base}.eml`);
    log.warn({ queueId: mail.id }, 'message dead-lettered');
  }

  const broker: Broker = {
    async publishMail(mail) {
      if (closed || !mailHandler) throw new Error('spool is not running');
      const work = mailHandler(mail).then((disposition) => {
        if (disposition === 'dead') deadLetter(mail);
      });
      inFlight.add(work);
      try {
        await work;
      } finally {
        inFlight.delete(work);
      }
    },
    async consumeMail(handler) {
      mailHandler = handler;
    },
    publishEvent(key, payload) {
      if (closed) return;
      setImmediate(() => {
        for (const subscriber of subscribers) {
          if (!subscriber.keys.has(key)) continue;
          try {
            subscriber.handler(key, payload);
          } catch (error) {
            log.error({ err: error, key }, 'event handler failed');
          }
        }
      });
    },
    async subscribe(keys, handler) {
      subscribers.push({ keys: new Set(keys), handler });
    },
    connected: () => !closed,
    dead: createFileDeadLetters(deadDir, (mail) => broker.publishMail(mail)),
    async close() {
      closed = true;
      await Promise.allSettled([...inFlight]);
      mailHandler = null;
    },
  };
  return broker;
}
