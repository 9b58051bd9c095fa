import type { Buffer } from 'node:buffer';
import type { Readable } from 'node:stream';
// Before mailauth: it replaces the SPF function mailauth takes when it is loaded.
import { SPF_CACHE_OPTION, type SpfCache } from './spf-cache.ts';
import './mailauth-header-scan.ts';
import { authenticate, type AuthenticateResult } from 'mailauth';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';
import type { Resolver } from './dns.ts';

export interface SenderAuthInput {
  /**
   * The message as the sender gave it (without our Received header): bytes, or a stream of them (a
   * large message is not joined for this); only its header section when needsBody() says so.
   */
  message: Buffer | Readable;
  clientAddress: string;
  helo: string;
  /** Envelope sender; '' for <>. */
  mailFrom: string;
  /** Our name: the authserv-id of the header (SMTP_HOSTNAME). */
  hostname: string;
  resolver: Resolver;
  /** For the whole evaluation; each lookup has its own (shorter) limit in `resolver`. */
  timeoutMs: number;
  /** SPF verdicts to reuse (with the resolver's own DNS cache); absent: every message is checked afresh. */
  spfCache?: SpfCache | null;
}

export interface SenderAuthResult {
  /** `Authentication-Results: ...` ending with CRLF, to prepend. */
  header: string;
  /** DMARC verdict, when DMARC could be evaluated. */
  dmarc: { result: string; policy: string; domain: string } | null;
  timedOut: boolean;
}

/** Header fields whose verification hashes the body: DKIM signatures and ARC sets (RFC 6376, RFC 8617). */
const BODY_HASHED = /^(?:dkim-signature|arc-[\w-]*)[ \t]*:/im;

/**
 * Whether sender authentication needs the message's body as well as this header section: only to
 * verify a DKIM signature or an ARC set. Unsigned mail (most of it) is judged on the header section
 * alone with the same verdict, and mailauth then does not run its line-ending filter byte by byte
 * over the body (a 4 KB message or a 25 MB one alike).
 */
export function needsBody(headerSection: Buffer): boolean {
  return BODY_HASHED.test(headerSection.toString('latin1'));
}

/** The Authentication-Results field of mailauth's header block (which also holds Received-SPF). */
export function authResultsField(headers: string): string | null {
  const fields = headers.split(/\r\n(?![ \t])/).filter((field) => field !== '');
  const field = fields.find((candidate) => /^Authentication-Results:/i.test(candidate));
  return field ? `${field}\r\n` : null;
}

/**
 * SPF, DKIM, DMARC and ARC for one message (mailauth), as one Authentication-Results header naming
 * us. Never throws and never takes longer than `timeoutMs`: on a timeout or an internal error the
 * header says `none` and nothing is refused.
 */
export async function evaluateSender(input: SenderAuthInput): Promise<SenderAuthResult> {
  const none = (why: string): SenderAuthResult => ({ header: `Authentication-Results: ${input.hostname}; none (${why})\r\n`, dmarc: null, timedOut: why === 'timed out' });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>((resolve) => {
    timer = setTimeout(() => resolve(null), input.timeoutMs);
    timer.unref();
  });
  try {
    const result: AuthenticateResult | null = await Promise.race([
      authenticate(input.message, {
        ip: input.clientAddress.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, ''),
        helo: input.helo,
        sender: input.mailFrom,
        mta: input.hostname,
        resolver: input.resolver as never,
        disableBimi: true,
        ...(input.spfCache ? { [SPF_CACHE_OPTION]: input.spfCache } : {}),
      }),
      timeout,
    ]);
    if (!result) return none('timed out');
    const header = authResultsField(result.headers);
    if (!header) return none('no result');
    const dmarc = result.dmarc ? { result: result.dmarc.status.result, policy: result.dmarc.policy, domain: result.dmarc.status.header?.from ?? result.dmarc.domain } : null;
    return { header, dmarc, timedOut: false };
  } catch {
    return none('temporary error');
  } finally {
    clearTimeout(timer);
  }
}

/** DMARC_REJECT: a DMARC fail under a reject policy is refused (Postfix + OpenDMARC RejectFailures). */
export function dmarcRefusal(dmarc: SenderAuthResult['dmarc']): SmtpReply | null {
  if (!dmarc || dmarc.result !== 'fail' || dmarc.policy !== 'reject') return null;
  return { code: 550, status: '5.7.1', text: `Message rejected: DMARC policy of ${dmarc.domain} is reject and the message fails it` };
}
