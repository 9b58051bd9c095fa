import type { Broker, MailDisposition } from '@backupmx/shared/broker.ts';
import type { Config } from '@backupmx/shared/config.ts';
import type { Logger } from '@backupmx/shared/logger.ts';
import { parseHeaders } from '@backupmx/shared/message.ts';
import { routeForRecipient } from '@backupmx/shared/routing.ts';
import type { Store } from '@backupmx/shared/store.ts';
import type { ReceivedMail } from '@backupmx/shared/types.ts';
import { context, propagation, trace } from '@opentelemetry/api';

const tracer = trace.getTracer('backupmx-spool');

/** Messages taken from RabbitMQ at once and not yet acknowledged. */
export const PREFETCH = 64;

/**
 * Consume mail.received: store each message with one delivery per recipient (idempotent on the
 * queue id), and only then let the broker acknowledge it; announce it with mail.spooled.
 * A message that does not start with a header section is dead-lettered, never dropped.
 */
export function createSpoolHandler(config: Pick<Config, 'PRIMARY' | 'domains'>, store: Store, broker: Broker, log: Logger) {
  return async function storeMail(mail: ReceivedMail): Promise<MailDisposition> {
    const parent = propagation.extract(context.active(), mail.trace ?? {});
    return tracer.startActiveSpan('spool.store', { attributes: { 'backupmx.queue_id': mail.id, 'backupmx.recipients': mail.envelope.rcptTo.length } }, parent, async (span) => {
      try {
        if (!parseHeaders(mail.body)) {
          log.error({ queueId: mail.id }, 'message headers cannot be understood; dead-lettering');
          return 'dead';
        }
        const routes: Record<string, string> = {};
        for (const recipient of mail.envelope.rcptTo) routes[recipient] = routeForRecipient(recipient, config);
        const created = await store.put(mail, routes);
        log.info({ queueId: mail.id, from: mail.envelope.mailFrom, recipients: mail.envelope.rcptTo.length, size: mail.body.length, duplicate: !created }, created ? 'message spooled' : 'message already spooled');
        broker.publishEvent('mail.spooled', { id: mail.id, routes: [...new Set(Object.values(routes))] });
        return 'stored';
      } finally {
        span.end();
      }
    });
  };
}

export async function startSpool(config: Config, store: Store, broker: Broker, log: Logger): Promise<void> {
  await broker.consumeMail(createSpoolHandler(config, store, broker, log), PREFETCH);
}
