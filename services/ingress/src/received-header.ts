import { isIPv6 } from 'node:net';

export interface ReceivedFields {
  /** The client's EHLO/HELO argument. */
  helo: string;
  clientAddress: string;
  /** Our name (SMTP_HOSTNAME). */
  by: string;
  /** ESMTP, ESMTPS (RFC 3848) or SMTP for HELO. */
  protocol: string;
  id: string;
  recipients: string[];
  date: Date;
  /** The TLS session, after STARTTLS: shown as a comment, as Postfix does. */
  tls?: { version: string; cipher: string } | null;
}

/** RFC 5322 date-time with a numeric zone, in UTC: `Sat, 28 Nov 2026 09:22:52 +0000`. */
export function rfc5322Date(date: Date): string {
  return date.toUTCString().replace(/GMT$/, '+0000');
}

/** `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 4.1.3); IPv4-mapped IPv6 shown as IPv4. */
export function addressLiteral(address: string): string {
  const plain = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
  return isIPv6(plain) ? `[IPv6:${plain}]` : `[${plain}]`;
}

/**
 * Our one trace header (RFC 5321 4.4): FROM the EHLO name and the client's IP literal, BY us, WITH
 * the protocol (after a TLS comment, if any), ID the queue id, FOR when there is exactly one recipient, then the date. Folded
 * with CRLF + tab; the result ends with CRLF.
 */
export function receivedHeader(fields: ReceivedFields): string {
  // Drop spaces and controls; neuter comment, quoting and address characters as Postfix does, so
  // an unbalanced "(" cannot turn the rest of the field into a comment.
  const helo = fields.helo.replace(/[^\x21-\x7e]/g, '').replace(/[()<>"\\;@]/g, '?') || 'unknown';
  const lines = [`Received: from ${helo} (${addressLiteral(fields.clientAddress)})`];
  if (fields.tls) {
    const clean = (text: string) => text.replace(/[^A-Za-z0-9._-]/g, '') || 'unknown';
    lines.push(`\t(using ${clean(fields.tls.version)} with cipher ${clean(fields.tls.cipher)})`);
  }
  lines.push(`\tby ${fields.by} (backupmx) with ${fields.protocol} id ${fields.id}`);
  const only = fields.recipients.length === 1 ? fields.recipients[0] : undefined;
  if (only !== undefined) {
    lines.push(`\tfor <${only}>; ${rfc5322Date(fields.date)}`);
  } else {
    lines[lines.length - 1] = `${lines.at(-1)};`;
    lines.push(`\t${rfc5322Date(fields.date)}`);
  }
  return `${lines.join('\r\n')}\r\n`;
}
