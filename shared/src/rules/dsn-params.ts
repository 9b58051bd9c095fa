/**
 * RFC 3461 parameters as ingress receives them. smtp-server (hideDSN: false) already answers
 * `501 5.5.4` to a duplicate parameter, a parameter without a value, a bad RET or NOTIFY and an
 * ORCPT without `addr-type;`, and decodes xtext; what it leaves to us are the length limits.
 */
import type { SmtpReply } from './smtp-reply.ts';
import type { Envelope, RecipientDsn } from './envelope.ts';

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
    /** The accepted MAIL FROM (smtp-server's parsed command, with its own `args`). */
    mailFrom?: Args | false;
    rcptTo: (Args & { address: string })[];
    dsn?: { ret?: string | null; envid?: string | null };
  };
}

function arg(address: Args, key: string): string | undefined {
  const value = (address.args || {}) as Record<string, unknown>;
  return typeof value[key] === 'string' ? value[key] : undefined;
}

const syntax = (text: string): SmtpReply => ({ code: 501, status: '5.5.4', text });

/** The parameters we advertise (EHLO): anything else is refused as Postfix does, 555 5.5.4. */
const MAIL_PARAMS = new Set(['SIZE', 'BODY', 'SMTPUTF8', 'RET', 'ENVID']);
const RCPT_PARAMS = new Set(['NOTIFY', 'ORCPT']);

function unsupported(address: Args, known: ReadonlySet<string>): SmtpReply | null {
  for (const [key, value] of Object.entries(address.args || {})) {
    if (!known.has(key.toUpperCase())) return { code: 555, status: '5.5.4', text: `Unsupported option: ${value === true ? key : `${key}=${String(value)}`}` };
  }
  return null;
}

/** Parameters smtp-server accepted but we do not offer (555), or over RFC 3461's length limit (501). */
function checkParams(address: Args, known: ReadonlySet<string>, limited: string, max: number): SmtpReply | null {
  const value = arg(address, limited);
  return unsupported(address, known) ?? (value !== undefined && value.length > max ? syntax(`${limited} longer than ${max} characters`) : null);
}

export const checkMailParams = (address: Args): SmtpReply | null => checkParams(address, MAIL_PARAMS, 'ENVID', MAX_ENVID);
export const checkRcptParams = (address: Args): SmtpReply | null => checkParams(address, RCPT_PARAMS, 'ORCPT', MAX_ORCPT);

/** The RFC 3461 parameters of a session (RET, ENVID; NOTIFY and ORCPT per recipient) for the stored Envelope. */
export function dsnParams(session: DsnSession): Pick<Envelope, 'ret' | 'envid' | 'dsn'> {
  const params: Pick<Envelope, 'ret' | 'envid' | 'dsn'> = {};
  // RET and ENVID of the accepted MAIL FROM: smtp-server also copies them to envelope.dsn from a
  // MAIL FROM that is then refused (an ENVID over 100 characters), and keeps them after it.
  const accepted = session.envelope.mailFrom;
  const ret = (accepted ? arg(accepted, 'RET') : (session.envelope.dsn?.ret ?? undefined))?.toUpperCase();
  if (ret === 'FULL' || ret === 'HDRS') params.ret = ret;
  const envid = accepted ? arg(accepted, 'ENVID') : session.envelope.dsn?.envid;
  if (envid) params.envid = envid;
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
