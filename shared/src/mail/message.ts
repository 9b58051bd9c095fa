import { Buffer } from 'node:buffer';
import mailsplit from 'mailsplit';

const { Headers } = mailsplit;

/** Bytes of the header section: up to and including the first empty line (or the whole message). */
export function headerSection(raw: Buffer): Buffer {
  const crlf = raw.indexOf('\r\n\r\n');
  const lf = raw.indexOf('\n\n');
  const ends = [crlf === -1 ? -1 : crlf + 4, lf === -1 ? -1 : lf + 2].filter((end) => end > 0);
  return ends.length ? raw.subarray(0, Math.min(...ends)) : raw;
}

const FIELD = /^[!-9;-~]+[ \t]*:/;

/**
 * Parse the header section of a raw message. Null when the message does not start with a header
 * field (RFC 5322 2.2: printable ASCII name, then a colon) and so cannot be treated as mail.
 */
export function parseHeaders(raw: Buffer): InstanceType<typeof Headers> | null {
  const section = headerSection(raw);
  if (!FIELD.test(section.subarray(0, 1000).toString('latin1'))) return null;
  try {
    const headers = new Headers(section);
    headers.getList();
    return headers;
  } catch {
    return null;
  }
}

/** Number of Received header fields (loop detection, RFC 5321 6.3). */
export function countReceived(raw: Buffer): number {
  return parseHeaders(raw)?.get('received').length ?? 0;
}
