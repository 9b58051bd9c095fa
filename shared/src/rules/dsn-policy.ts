/**
 * When a delivery status notification (RFC 3464) is sent, and what it says: pure rules.
 */
import type { Envelope } from './envelope.ts';

/** The header fields of a message, as mail/message.ts parses them (first value, '' when absent). */
export interface HeaderFields {
  getFirst(name: string): string;
}

/** RFC 3464 2.3.3 actions we report. */
export type ReportAction = 'failed' | 'delayed' | 'relayed';

/** The NOTIFY a recipient gave (upper case), or null when it gave none. */
export function notifyOf(envelope: Envelope, recipient: string): string[] | null {
  const dsn = envelope.dsn;
  if (!dsn) return null;
  const own = dsn[recipient] ?? Object.entries(dsn).find(([address]) => address.toLowerCase() === recipient.toLowerCase())?.[1];
  return own?.notify?.length ? own.notify : null;
}

/** The ORCPT a recipient gave (decoded, `rfc822;user@example.com`), or null. */
export function orcptOf(envelope: Envelope, recipient: string): string | null {
  const dsn = envelope.dsn;
  if (!dsn) return null;
  const own = dsn[recipient] ?? Object.entries(dsn).find(([address]) => address.toLowerCase() === recipient.toLowerCase())?.[1];
  return own?.orcpt ?? null;
}

/**
 * Does this recipient's NOTIFY ask for a report of this action (RFC 3461 4.1)? NEVER: no report.
 * No NOTIFY: failures, and delays (RFC 3461 leaves "FAILURE or FAILURE,DELAY" to the MTA; delay
 * notices are only sent at all when DELAY_WARNING is set). SUCCESS covers "relayed".
 */
export function wantsReport(notify: readonly string[] | null, action: ReportAction): boolean {
  if (notify === null || notify.length === 0) return action !== 'relayed';
  if (notify.includes('NEVER')) return false;
  return notify.includes({ failed: 'FAILURE', delayed: 'DELAY', relayed: 'SUCCESS' }[action]);
}

/**
 * Why no report at all may be sent about this message, or null when one may: a null sender
 * (RFC 5321 6.1: reports are not reported), an Auto-Submitted message other than `no` (RFC 3834),
 * or a message that is itself a report (multipart/report).
 */
export function reportSuppressed(mailFrom: string, headers: HeaderFields | null): string | null {
  if (mailFrom === '') return 'null sender';
  if (!headers) return null;
  const auto = headers.getFirst('auto-submitted').split(';')[0]?.trim().toLowerCase() ?? '';
  if (auto !== '' && auto !== 'no') return `Auto-Submitted: ${auto}`;
  const type = headers.getFirst('content-type').split(';')[0]?.trim().toLowerCase() ?? '';
  if (type === 'multipart/report') return 'the message is itself a report (multipart/report)';
  return null;
}

const ENHANCED = /^(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})\b/;

/**
 * The RFC 3463 status for a recipient's report: the enhanced code of its reply when there is one,
 * else the reply's class (`5.0.0`), else `fallback` (no reply at all: connection failures).
 * The class follows the action: failed 5 (4.4.7 for expiry is given explicitly), delayed 4, relayed 2.
 */
export function statusOf(reply: string | null | undefined, fallback: string): string {
  const text = (reply ?? '').trim();
  const enhanced = ENHANCED.exec(text);
  if (enhanced) return `${enhanced[1]}.${enhanced[2]}.${enhanced[3]}`;
  const code = /^([245])\d\d\b/.exec(text);
  return code ? `${code[1]}.0.0` : fallback;
}

/** Is this recorded reply an SMTP reply of a remote host (`smtp;` diagnostic) rather than our own text? */
export function isSmtpReply(reply: string | null | undefined): boolean {
  return /^[245]\d\d[ -]/.test((reply ?? '').trim());
}
