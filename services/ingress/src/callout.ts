/**
 * Recipient verification by callout: ask the primary whether it would take a recipient, the way
 * Postfix's verify(8) does: greeting, EHLO, `MAIL FROM:<>`, `RCPT TO:<address>`, QUIT. No message
 * is sent. A small line reader over node:net (nodemailer's client has no RCPT-only transaction).
 */
import net from 'node:net';
import { formatTarget, type Target } from '@backupmx/shared/config.ts';

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

interface Reply {
  code: number;
  lines: string[];
}

const MAX_REPLY_BYTES = 64 * 1024;

/** Replies in order from a socket; `next()` rejects when the socket fails, closes or the deadline passes. */
function replies(socket: net.Socket) {
  let buffer = '';
  let lines: string[] = [];
  const ready: Reply[] = [];
  let waiting: { resolve: (reply: Reply) => void; reject: (error: Error) => void } | null = null;
  let failure: Error | null = null;

  const fail = (error: Error) => {
    failure ??= error;
    waiting?.reject(failure);
    waiting = null;
  };
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf('\n')) !== -1) {
      const line = buffer.slice(0, newline).replace(/\r$/, '');
      buffer = buffer.slice(newline + 1);
      const match = /^(\d{3})([ -]?)/.exec(line);
      if (!match) return fail(new Error(`malformed reply: ${JSON.stringify(line.slice(0, 100))}`));
      lines.push(line);
      if (match[2] === '-') continue;
      const reply = { code: Number(match[1]), lines };
      lines = [];
      if (waiting) {
        waiting.resolve(reply);
        waiting = null;
      } else ready.push(reply);
    }
    if (buffer.length > MAX_REPLY_BYTES) fail(new Error('reply too long'));
  });
  socket.on('error', (error) => fail(error));
  socket.on('close', () => fail(new Error('connection closed')));
  return {
    next(): Promise<Reply> {
      const reply = ready.shift();
      if (reply) return Promise.resolve(reply);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject };
      });
    },
  };
}

const text = (reply: Reply) => reply.lines.join(' ').slice(0, 300);

/** One conversation with one target. Throws when the target cannot be reached or stops answering. */
async function ask(target: Target, address: string, options: CalloutOptions, deadline: number): Promise<Omit<CalloutResult, 'target' | 'unreachable'> & { reachable: boolean }> {
  const socket = net.connect({ host: target.host, port: target.port });
  socket.setNoDelay(true);
  const timer = setTimeout(() => socket.destroy(new Error(`no answer within ${options.timeoutMs} ms`)), Math.max(1, deadline - Date.now()));
  const reader = replies(socket);
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
