/**
 * RFC 3461 parameters as ingress receives them. smtp-server (hideDSN: false) already answers
 * `501 5.5.4` to a duplicate parameter, a parameter without a value, a bad RET or NOTIFY and an
 * ORCPT without `addr-type;`, and decodes xtext; what it leaves to us are the length limits.
 */
import type { SmtpReply } from './smtp-reply.ts';
import type { Envelope, RecipientDsn } from './types.ts';

/** RFC 3461 4.4 and 4.2: ENVID at most 100 characters, ORCPT at most 500. */
export const MAX_ENVID = 100;
export const MAX_ORCPT = 500;

/** The parts of smtp-server's address objects and session we read (the typings lack them). */
interface Args {
  args?: object | false | undefined;
  dsn?: { notify?: string[] | undefined; orcpt?: string | undefined } | undefined;
}
export interface DsnSession {
  envelope: {
    rcptTo: (Args & { address: string })[];
    dsn?: { ret?: string | null; envid?: string | null };
  };
}

function arg(address: Args, key: string): string | undefined {
  const value = (address.args || {}) as Record<string, unknown>;
  return typeof value[key] === 'string' ? value[key] : undefined;
}

const syntax = (text: string): SmtpReply => ({ code: 501, status: '5.5.4', text });

/** MAIL FROM parameters smtp-server accepted but RFC 3461 limits. */
export function checkMailParams(address: Args): SmtpReply | null {
  const envid = arg(address, 'ENVID');
  if (envid !== undefined && envid.length > MAX_ENVID) return syntax(`ENVID longer than ${MAX_ENVID} characters`);
  return null;
}

/** RCPT TO parameters smtp-server accepted but RFC 3461 limits. */
export function checkRcptParams(address: Args): SmtpReply | null {
  const orcpt = arg(address, 'ORCPT');
  if (orcpt !== undefined && orcpt.length > MAX_ORCPT) return syntax(`ORCPT longer than ${MAX_ORCPT} characters`);
  return null;
}

/** The RFC 3461 parameters of a session (RET, ENVID; NOTIFY and ORCPT per recipient) for the stored Envelope. */
export function dsnParams(session: DsnSession): Pick<Envelope, 'ret' | 'envid' | 'dsn'> {
  const params: Pick<Envelope, 'ret' | 'envid' | 'dsn'> = {};
  const ret = session.envelope.dsn?.ret?.toUpperCase();
  if (ret === 'FULL' || ret === 'HDRS') params.ret = ret;
  if (session.envelope.dsn?.envid) params.envid = session.envelope.dsn.envid;
  const dsn: Record<string, RecipientDsn> = {};
  for (const rcpt of session.envelope.rcptTo) {
    const own: RecipientDsn = {};
    if (rcpt.dsn?.notify?.length) own.notify = rcpt.dsn.notify.map((value) => value.toUpperCase());
    if (rcpt.dsn?.orcpt) own.orcpt = rcpt.dsn.orcpt;
    if (own.notify || own.orcpt) dsn[rcpt.address] = own;
  }
  if (Object.keys(dsn).length > 0) params.dsn = dsn;
  return params;
}
