/**
 * The delivery status notification itself (RFC 3464): `multipart/report; report-type=delivery-status`
 * with a readable text, the `message/delivery-status` fields and the original message's headers
 * (`text/rfc822-headers`) or, when the sender asked RET=FULL, the whole message (`message/rfc822`).
 * The MIME structure is nodemailer's mime-node; the field text is ours.
 */
import { Buffer } from 'node:buffer';
import { isIP } from 'node:net';
import MimeNode from 'nodemailer/lib/mime-node';
import { headerSection } from './message.ts';
import { isSmtpReply, type ReportAction } from '../rules/dsn-policy.ts';
import type { Envelope } from '../types.ts';

export interface ReportRecipient {
  recipient: string;
  /** ORCPT as the sender gave it (decoded): `rfc822;user@example.com`. */
  orcpt: string | null;
  action: ReportAction;
  /** RFC 3463 status, e.g. `5.1.1`. */
  status: string;
  /** The host that gave `reply`, when a remote host did. */
  remoteMta: string | null;
  /** The remote reply (`550 5.1.1 ...`) or our own explanation. */
  reply: string | null;
  lastAttemptAt: number | null;
  /** Delayed only: when we give up. */
  willRetryUntil?: number;
}

export interface ReportInput {
  /** SMTP_HOSTNAME. */
  reportingMta: string;
  /** Queue id of the message reported on. */
  queueId: string;
  envelope: Envelope;
  arrivalDate: number;
  recipients: ReportRecipient[];
  /** The message as stored (our Received header on top). */
  original: Buffer;
  /** Attach the whole message (RET=FULL on a failure report) instead of its headers. */
  returnFull: boolean;
  date: number;
  /** The report's Message-ID, without angle brackets. */
  messageId: string;
}

/** RFC 5322 date-time with a numeric zone, in UTC. */
export function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace(/GMT$/, '+0000');
}

/** One line of printable US-ASCII: controls and 8-bit characters become `?`. */
function clean(text: string): string {
  return text.replace(/\s+/g, ' ').replace(/[^\x20-\x7e]/g, '?').trim();
}

/** `Name: value`, folded at spaces before 78 characters (RFC 5322 2.2.3 style; RFC 3464 allows it). */
function field(name: string, value: string): string {
  const words = clean(value).split(' ');
  const lines: string[] = [];
  let line = `${name}:`;
  for (const word of words) {
    if (line.length + 1 + word.length > 78 && line.trim().length > name.length + 1) {
      lines.push(line);
      line = ` ${word}`;
    } else line += ` ${word}`;
  }
  lines.push(line);
  return lines.join('\r\n');
}

function mtaName(host: string): string {
  return `dns; ${isIP(host) ? `[${host}]` : host}`;
}

const ORDER: ReportAction[] = ['failed', 'delayed', 'relayed'];

/** The report's Subject, by its gravest action. */
export function reportSubject(recipients: readonly Pick<ReportRecipient, 'action'>[]): string {
  const action = ORDER.find((candidate) => recipients.some((entry) => entry.action === candidate)) ?? 'failed';
  return {
    failed: 'Undelivered Mail Returned to Sender',
    delayed: 'Delayed Mail (still being retried)',
    relayed: 'Successful Mail Delivery Report',
  }[action];
}

/** The `message/delivery-status` body: per-message fields, then one block per recipient. */
export function deliveryStatus(input: Omit<ReportInput, 'original' | 'returnFull' | 'date' | 'messageId'>): string {
  const head = [field('Reporting-MTA', `dns; ${input.reportingMta}`), field('X-Backupmx-Queue-ID', input.queueId)];
  if (input.envelope.envid) head.push(field('Original-Envelope-Id', input.envelope.envid));
  if (input.envelope.clientHelo || input.envelope.clientAddress) {
    const address = input.envelope.clientAddress ? ` ([${input.envelope.clientAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '')}])` : '';
    head.push(field('Received-From-MTA', `dns; ${input.envelope.clientHelo ?? 'unknown'}${address}`));
  }
  head.push(field('Arrival-Date', rfc5322Date(input.arrivalDate)));
  const blocks = input.recipients.map((entry) => {
    const lines = [field('Final-Recipient', `rfc822; ${entry.recipient}`)];
    if (entry.orcpt) lines.push(field('Original-Recipient', entry.orcpt));
    lines.push(field('Action', entry.action), field('Status', entry.status));
    if (entry.remoteMta) lines.push(field('Remote-MTA', mtaName(entry.remoteMta)));
    if (entry.reply) lines.push(field('Diagnostic-Code', `${isSmtpReply(entry.reply) ? 'smtp' : 'X-Backupmx'}; ${entry.reply}`));
    if (entry.lastAttemptAt !== null) lines.push(field('Last-Attempt-Date', rfc5322Date(entry.lastAttemptAt)));
    if (entry.willRetryUntil !== undefined) lines.push(field('Will-Retry-Until', rfc5322Date(entry.willRetryUntil)));
    return lines.join('\r\n');
  });
  return `${[head.join('\r\n'), ...blocks].join('\r\n\r\n')}\r\n`;
}

function describe(entry: ReportRecipient): string {
  const host = entry.remoteMta ? `host ${entry.remoteMta} said: ` : '';
  const reply = entry.reply ? `${host}${clean(entry.reply)}` : 'no further details';
  return `<${entry.recipient}>: ${reply}`;
}

/** The readable first part. */
export function humanText(input: Pick<ReportInput, 'reportingMta' | 'recipients' | 'queueId'> & { lifetime?: string }): string {
  const lines = [`This is the mail system at host ${input.reportingMta}.`, ''];
  const by = (action: ReportAction) => input.recipients.filter((entry) => entry.action === action);
  const failed = by('failed');
  const delayed = by('delayed');
  const relayed = by('relayed');
  if (failed.length) {
    lines.push(
      'Your message could not be delivered to one or more recipients, and will',
      'not be tried again. The reasons are below; the message (or its headers)',
      'is attached.',
      '',
      ...failed.map(describe),
      '',
    );
  }
  if (delayed.length) {
    const until = delayed[0]?.willRetryUntil;
    lines.push(
      'Your message has not been delivered yet to the recipients below. This is',
      'only a warning: you do not need to send the message again. Delivery will',
      `be tried${until === undefined ? '' : ` until ${rfc5322Date(until)}`}.`,
      '',
      ...delayed.map(describe),
      '',
    );
  }
  if (relayed.length) {
    lines.push(
      'Your message was handed on to the recipients\' mail server, which does not',
      'send delivery notifications: this is the last report you will get for:',
      '',
      ...relayed.map(describe),
      '',
    );
  }
  lines.push(`Queue id: ${input.queueId}. If you write to postmaster about it, include this report.`, '');
  return lines.join('\r\n');
}

/** Build the whole report message (RFC 5322 bytes, CRLF line ends). */
export async function buildReport(input: ReportInput, to: string): Promise<{ raw: Buffer; eightBit: boolean }> {
  const attached = input.returnFull ? input.original : headerSection(input.original);
  const eightBit = attached.some((byte) => byte > 0x7f);
  const root = new MimeNode('multipart/report; report-type=delivery-status', { hostname: input.reportingMta });
  root.setHeader({
    From: { name: 'Mail Delivery System', address: `MAILER-DAEMON@${input.reportingMta}` },
    To: to,
    Subject: reportSubject(input.recipients),
    Date: rfc5322Date(input.date),
    'Message-ID': `<${input.messageId}>`,
    'Auto-Submitted': 'auto-replied',
  });
  root.createChild('text/plain; charset=utf-8').setContent(humanText(input));
  root.createChild('message/delivery-status').setContent(deliveryStatus(input));
  if (input.returnFull) {
    const part = root.createChild('message/rfc822').setContent(attached);
    if (eightBit) part.setHeader('Content-Transfer-Encoding', '8bit');
  } else {
    // text/*: mime-node encodes it (quoted-printable) if the headers hold 8-bit bytes.
    root.createChild('text/rfc822-headers').setContent(attached);
  }
  if (input.returnFull && eightBit) root.setHeader('Content-Transfer-Encoding', '8bit');
  return { raw: await root.build(), eightBit: input.returnFull && eightBit };
}
