/**
 * Sending delivery status notifications: decide, build, and queue them as new mail from `<>` to
 * the envelope sender through `mail.received`, like any other message (the spool routes the
 * sender's domain to SMARTHOST or its DNS MX). Used by the deliverer (failed, relayed) and the
 * spool's sweep (expired, delayed).
 */
import { Buffer } from 'node:buffer';
import type { Readable } from 'node:stream';
import type { Broker } from '../broker/broker.ts';
import type { Config } from '../runtime/config.ts';
import type { Logger } from '../runtime/logger.ts';
import { createHash } from 'node:crypto';
import { notifyOf, orcptOf, reportSuppressed, wantsReport, type ReportAction } from '../rules/dsn-policy.ts';
import { parseHeaders } from './message.ts';
import { buildReport, type ReportRecipient } from './dsn-report.ts';
import type { Store } from '../store/store.ts';
import type { MessageInfo } from '../types.ts';

/** One recipient to report on; `orcpt` comes from the message's envelope. */
export type ReportEntry = Omit<ReportRecipient, 'orcpt'>;

export type ReportResult =
  | { sent: false; reason: string }
  | { sent: true; id: string; recipients: string[]; actions: ReportAction[] };

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}

export function createReporter(config: Pick<Config, 'SMTP_HOSTNAME'>, store: Pick<Store, 'readBody'>, broker: Pick<Broker, 'publishMail'>, log: Logger) {
  return {
    /**
     * Report on some recipients of one message: those whose NOTIFY asks for it, in one report.
     * Nothing is sent for a message that may not be reported on (null sender, Auto-Submitted,
     * multipart/report). `original` saves reading the body again. Resolves once the report is
     * queued (publisher confirm); rejects when it could not be.
     */
    async report(message: MessageInfo, entries: readonly ReportEntry[], kind: string, original?: Buffer): Promise<ReportResult> {
      const wanted = entries.filter((entry) => wantsReport(notifyOf(message.envelope, entry.recipient), entry.action));
      if (wanted.length === 0) return { sent: false, reason: entries.length ? 'NOTIFY asks for no report' : 'nothing to report' };
      if (message.mailFrom === '') return { sent: false, reason: 'null sender' };
      const raw = original ?? (await readAll(await store.readBody(message.id)));
      const suppressed = reportSuppressed(message.mailFrom, parseHeaders(raw));
      if (suppressed) {
        log.info({ queueId: message.id, reason: suppressed, recipients: wanted.length }, 'no delivery report sent');
        return { sent: false, reason: suppressed };
      }
      const recipients = wanted.map((entry) => ({ ...entry, orcpt: orcptOf(message.envelope, entry.recipient) }));
      const now = Date.now();
      const id = reportId(message.id, message.receivedAt, kind, recipients.map((entry) => entry.recipient));
      const report = await buildReport(
        {
          reportingMta: config.SMTP_HOSTNAME,
          queueId: message.id,
          envelope: message.envelope,
          arrivalDate: message.receivedAt,
          recipients,
          original: raw,
          returnFull: message.envelope.ret === 'FULL' && recipients.some((entry) => entry.action === 'failed'),
          date: now,
          messageId: `${id}.report@${config.SMTP_HOSTNAME}`,
        },
        message.mailFrom,
      );
      await broker.publishMail({
        id,
        envelope: { mailFrom: '', rcptTo: [message.mailFrom], ...(report.eightBit ? { body8bit: true } : {}) },
        body: report.raw,
        receivedAt: now,
        trace: message.trace,
      });
      const actions = [...new Set(recipients.map((entry) => entry.action))];
      log.info({ queueId: message.id, reportId: id, to: message.mailFrom, actions, recipients: recipients.map((entry) => entry.recipient) }, 'delivery report queued');
      return { sent: true, id, recipients: recipients.map((entry) => entry.recipient), actions };
    },
  };
}

export type Reporter = ReturnType<typeof createReporter>;

/**
 * The queue id of the report about `messageId` for these recipients: the usual 17-character form,
 * derived rather than random, so a report queued twice (the deliverer crashed between queueing it
 * and recording the outcome) is stored once: the spool's put is idempotent on the id.
 */
export function reportId(messageId: string, receivedAt: number, kind: string, recipients: readonly string[]): string {
  const time = receivedAt.toString(32).toUpperCase().padStart(9, '0').slice(-9);
  const digest = createHash('sha256').update([messageId, kind, ...[...recipients].sort()].join('\n')).digest();
  const random = digest.readUIntBE(0, 5).toString(32).toUpperCase().padStart(8, '0');
  return `${time}${random}`;
}
