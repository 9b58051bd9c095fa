/**
 * Recipient verification by callout: ask the primary whether it would take a recipient, the way
 * Postfix's verify(8) does: greeting, EHLO, `MAIL FROM:<>`, `RCPT TO:<address>`, QUIT. No message
 * is sent. Plain node:net with the shared reply reader (nodemailer's client has no RCPT-only
 * transaction).
 */
import net from 'node:net';
import { formatTarget, type Target } from '@backupmx/shared/runtime/config.ts';
import { replyText, smtpReplyReader, type SmtpReplyLines } from '@backupmx/shared/mail/smtp-reply-reader.ts';

export type Verdict = 'valid' | 'invalid' | 'unknown';

export interface CalloutResult {
  /** valid: 2xx to RCPT; invalid: 5xx to RCPT; unknown: anything else. */
  verdict: Verdict;
  /** The primary's reply to RCPT, or what went wrong. */
  reply: string;
  /** No target could be reached or none answered in time. */
  unreachable: boolean;
  /** The target that answered, when one did. */
  target: string | null;
}

export interface CalloutOptions {
  heloName: string;
  /** For the whole callout, every target tried included. */
  timeoutMs: number;
}

const text = (reply: SmtpReplyLines) => replyText(reply).slice(0, 300);

/** One conversation with one target. Throws when the target cannot be reached or stops answering. */
async function ask(target: Target, address: string, options: CalloutOptions, deadline: number): Promise<Omit<CalloutResult, 'target' | 'unreachable'> & { reachable: boolean }> {
  const socket = net.connect({ host: target.host, port: target.port });
  socket.setNoDelay(true);
  const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${options.timeoutMs} ms`)), Math.max(1, deadline - Date.now()));
  const reader = smtpReplyReader(socket);
  const command = async (line: string) => {
    socket.write(`${line}\r\n`);
    return reader.next();
  };
  try {
    const greeting = await reader.next();
    if (greeting.code >= 300) return { verdict: 'unknown', reply: `greeting: ${text(greeting)}`, reachable: false };
    let hello = await command(`EHLO ${options.heloName}`);
    if (hello.code >= 500) hello = await command(`HELO ${options.heloName}`);
    if (hello.code >= 300) return { verdict: 'unknown', reply: `EHLO: ${text(hello)}`, reachable: true };
    const utf8 = /[^\x00-\x7f]/.test(address);
    if (utf8 && !hello.lines.some((line) => /^250[ -]SMTPUTF8\b/i.test(line))) {
      return { verdict: 'unknown', reply: 'the primary does not offer SMTPUTF8', reachable: true };
    }
    const mail = await command(`MAIL FROM:<>${utf8 ? ' SMTPUTF8' : ''}`);
    if (mail.code >= 300) return { verdict: 'unknown', reply: `MAIL FROM:<>: ${text(mail)}`, reachable: true };
    const rcpt = await command(`RCPT TO:<${address}>`);
    const verdict = rcpt.code < 300 ? 'valid' : rcpt.code >= 500 ? 'invalid' : 'unknown';
    return { verdict, reply: text(rcpt), reachable: true };
  } finally {
    clearTimeout(timer);
    if (!socket.destroyed) {
      socket.end('QUIT\r\n');
      setTimeout(() => socket.destroy(), 1000).unref();
    }
  }
}

/**
 * Verify `address` with the first target of the route that answers (the next one on connection
 * failure or a refusing greeting), all within `timeoutMs`. Always resolves.
 */
export async function callout(targets: readonly Target[], address: string, options: CalloutOptions): Promise<CalloutResult> {
  const deadline = Date.now() + options.timeoutMs;
  let last = 'no next-hop target';
  for (const target of targets) {
    if (Date.now() >= deadline) break;
    try {
      const result = await ask(target, address, options, deadline);
      if (result.reachable) return { verdict: result.verdict, reply: result.reply, unreachable: false, target: formatTarget(target) };
      last = `${formatTarget(target)}: ${result.reply}`;
    } catch (error) {
      last = `${formatTarget(target)}: ${(error as Error).message}`;
    }
  }
  return { verdict: 'unknown', reply: last, unreachable: true, target: null };
}
