import type { Broker, MailDisposition } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { parseHeaders } from '@backupmx/shared/mail/message.ts';
import { routeForRecipient, type RoutingConfig } from '@backupmx/shared/rules/routing.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import type { ReceivedMail } from '@backupmx/shared/types.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { messagesDeadLettered } from '@backupmx/shared/runtime/metrics.ts';
import type { DiskHeadroom } from '@backupmx/shared/runtime/disk-headroom.ts';

const tracer = trace.getTracer('backupmx-spool');

/** Messages taken from RabbitMQ at once and not yet acknowledged. */
export const PREFETCH = 64;

/**
 * How long one try waits for an unready store (MongoDB unreachable) before it fails; the broker
 * keeps the message unacknowledged and tries again (shared/src/broker/amqp-broker.ts).
 */
export const STORE_WAIT_MS = 10_000;

/**
 * Whether the store can take the message, waiting up to `waitMs` for it: ready, and (SQLite) its
 * DATA_DIR not below DISK_HEADROOM. Null when it can; otherwise why not.
 */
async function storeReady(store: Store, waitMs: number, disk: DiskHeadroom | null): Promise<string | null> {
  const why = () => {
    if (!store.ready()) return 'the store is not ready (MongoDB unreachable?)';
    const space = disk?.check();
    return space?.low ? `DATA_DIR is below DISK_HEADROOM (${space.free} bytes free, ${disk?.threshold} kept for the queue's own writes)` : null;
  };
  for (const deadline = Date.now() + waitMs; ; await sleep(250)) {
    const reason = why();
    if (reason === null || Date.now() >= deadline) return reason;
  }
}

/**
 * Consume mail.received: store each message with one delivery per recipient (idempotent on the
 * queue id), and only then let the broker acknowledge it; announce it with mail.spooled.
 * A message that does not start with a header section is dead-lettered, never dropped. While the
 * store is not ready the handler throws (after waiting up to storeWaitMs): nothing is acknowledged.
 */
export function createSpoolHandler(config: RoutingConfig, store: Store, broker: Broker, log: Logger, storeWaitMs = STORE_WAIT_MS, disk: DiskHeadroom | null = null) {
  return async function storeMail(mail: ReceivedMail): Promise<MailDisposition> {
    const parent = propagation.extract(context.active(), mail.trace ?? {});
    return tracer.startActiveSpan('spool.store', { attributes: { 'backupmx.queue_id': mail.id, 'backupmx.recipients': mail.envelope.rcptTo.length } }, parent, async (span) => {
      try {
        if (!parseHeaders(mail.body)) {
          log.error({ queueId: mail.id }, 'message headers cannot be understood; dead-lettering');
          messagesDeadLettered.inc();
          span.setAttribute('backupmx.dead_lettered', true);
          return 'dead';
        }
        const notNow = await storeReady(store, storeWaitMs, disk);
        if (notNow) {
          // Thrown, not acknowledged: the broker holds the message and tries again later.
          throw new Error(`${notNow}; leaving the message in RabbitMQ`);
        }
        const routes: Record<string, string> = {};
        for (const recipient of mail.envelope.rcptTo) routes[recipient] = routeForRecipient(recipient, config);
        const size = mail.body.length; // taken first: put may move a large body to the store's thread
        const written = disk?.admit(size);
        const created = await store.put(mail, routes).finally(() => written?.());
        log.info({ queueId: mail.id, from: mail.envelope.mailFrom, recipients: mail.envelope.rcptTo.length, size, duplicate: !created }, created ? 'message spooled' : 'message already spooled');
        broker.publishEvent('mail.spooled', { id: mail.id, routes: [...new Set(Object.values(routes))] });
        return 'stored';
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        throw error;
      } finally {
        span.end();
      }
    });
  };
}

/** `disk`: DISK_HEADROOM of the SQLite store's DATA_DIR; while below it, mail waits in RabbitMQ (the deliverers still drain the spool). */
export async function startSpool(config: Config, store: Store, broker: Broker, log: Logger, disk: DiskHeadroom | null = null): Promise<void> {
  await broker.consumeMail(createSpoolHandler(config, store, broker, log, STORE_WAIT_MS, disk), PREFETCH);
}
