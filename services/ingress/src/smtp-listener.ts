import './smtp-server-patches.ts';
import { Buffer } from 'node:buffer';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { Broker } from '@backupmx/shared/broker.ts';
import type { Config } from '@backupmx/shared/config.ts';
import type { Logger } from '@backupmx/shared/logger.ts';
import { countReceived } from '@backupmx/shared/message.ts';
import { newQueueId } from '@backupmx/shared/queue-id.ts';
import { replyError } from '@backupmx/shared/smtp-reply.ts';
import { checkRecipient } from './relay-policy.ts';
import { receivedHeader } from './received-header.ts';

/** Received headers above which a message is taken to be looping (Postfix hopcount_limit). */
export const HOP_LIMIT = 50;

const tracer = trace.getTracer('backupmx-ingress');

/** Read the whole DATA stream (smtp-server replies only once it has ended). */
function readAll(stream: SMTPServerDataStream, limit: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) chunks.push(chunk);
    });
    stream.once('end', () => resolve(stream.sizeExceeded || size > limit ? null : Buffer.concat(chunks, size)));
    stream.once('error', reject);
  });
}

/**
 * The SMTP listener: a backup MX for RELAY_DOMAINS only. Answers 250 to DATA only after the broker
 * has confirmed the message; anything else is a 4xx so the sender keeps the message.
 */
export function createSmtpListener(config: Config, broker: Broker, log: Logger): SMTPServer {
  const relayDomains = new Set(config.RELAY_DOMAINS);
  const server: SMTPServer = new SMTPServer({
    name: config.SMTP_HOSTNAME,
    banner: 'ESMTP backupmx',
    size: config.MAX_MESSAGE_SIZE,
    disabledCommands: ['AUTH', 'STARTTLS'],
    hideENHANCEDSTATUSCODES: false,
    hidePIPELINING: false,
    hide8BITMIME: false,
    hideSMTPUTF8: false,
    hideDSN: true,
    disableReverseLookup: true,
    // RFC 5321 4.5.3.2: a server waits at least 5 minutes for the next command.
    socketTimeout: 300_000,
    closeTimeout: 20_000,
    logger: false,
    // Read by smtp-server-patches.ts.
    ...({ greetingDelay: config.GREETING_DELAY } as object),

    onConnect(session, callback) {
      log.debug({ client: session.remoteAddress, session: session.id }, 'connect');
      callback();
    },

    onRcptTo(address, session, callback) {
      if (session.envelope.rcptTo.length >= config.MAX_RECIPIENTS) {
        return callback(replyError({ code: 452, status: '4.5.3', text: 'Error: too many recipients' }));
      }
      const refusal = checkRecipient(address.address, relayDomains);
      if (refusal) {
        log.info({ client: session.remoteAddress, from: session.envelope.mailFrom && session.envelope.mailFrom.address, to: address.address, reply: refusal.code }, 'recipient refused');
        return callback(replyError(refusal));
      }
      callback();
    },

    onData(stream, session, callback) {
      handleData(stream, session).then(
        (id) => callback(null, `2.0.0 Ok: queued as ${id}`),
        (error: Error) => callback(error),
      );
    },
  });

  async function handleData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const id = newQueueId();
    const body = await readAll(stream, config.MAX_MESSAGE_SIZE);
    const recipients = session.envelope.rcptTo.map((rcpt) => rcpt.address);
    const mailFrom = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const fields = { queueId: id, client: session.remoteAddress, from: mailFrom, recipients: recipients.length };
    if (!body) {
      log.info({ ...fields }, 'message refused: too large');
      throw replyError({ code: 552, status: '5.3.4', text: `Message size exceeds fixed limit of ${config.MAX_MESSAGE_SIZE} bytes` });
    }
    const hops = countReceived(body);
    if (hops > HOP_LIMIT) {
      log.warn({ ...fields, hops }, 'message refused: mail loop');
      throw replyError({ code: 554, status: '5.4.6', text: `Too many hops (${hops} Received headers): mail loop?` });
    }
    const header = receivedHeader({
      helo: session.hostNameAppearsAs || 'unknown',
      clientAddress: session.remoteAddress,
      by: config.SMTP_HOSTNAME,
      protocol: session.transmissionType || 'ESMTP',
      id,
      recipients,
      date: new Date(),
    });
    const raw = Buffer.concat([Buffer.from(header, 'latin1'), body]);
    return tracer.startActiveSpan('smtp.data', { attributes: { 'backupmx.queue_id': id, 'backupmx.recipients': recipients.length, 'messaging.message.body.size': raw.length } }, async (span) => {
      const carrier: Record<string, string> = {};
      propagation.inject(context.active(), carrier);
      try {
        await broker.publishMail({ id, envelope: { mailFrom, rcptTo: recipients }, body: raw, receivedAt: Date.now(), trace: carrier });
        log.info({ ...fields, size: raw.length }, 'message accepted');
        return id;
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        log.warn({ ...fields, err: error }, 'message not accepted: broker did not confirm');
        throw replyError({ code: 451, status: '4.3.0', text: 'Temporary failure: message not queued, try again later' });
      } finally {
        span.end();
      }
    });
  }

  server.on('error', (error) => log.error({ err: error }, 'smtp server error'));
  return server;
}
