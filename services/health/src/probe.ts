/**
 * One SMTP health probe: connect, read the greeting, EHLO, and, when STARTTLS is offered, STARTTLS
 * and the handshake (its facts: is the certificate trusted, does it name the target, its pins),
 * then QUIT.
 *
 * Plain node:net with the shared reply reader rather than nodemailer's SMTPConnection: that client
 * upgrades to STARTTLS on its own, does not hand back the greeting, and its ~2000 lines cover far
 * more than four steps of plain SMTP. Here every outcome is one of a few messages, and the promise
 * always resolves.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import tls, { type TLSSocket } from 'node:tls';
import { chainOnly, securedFacts, unsecuredFacts } from '@backupmx/shared/mail/peer-tls.ts';
import { replyText, smtpReplyReader, type SmtpReplyLines } from '@backupmx/shared/mail/smtp-reply-reader.ts';
import { NOT_OFFERED, type TlsFacts } from '@backupmx/shared/rules/next-hop-tls.ts';

/**
 * `ok`: the target answers SMTP (greeting and EHLO); its TLS, good or bad, does not change that (a
 * sender reaches it all the same), it is reported in `tls`. `latencyMs` runs to the EHLO reply.
 */
export type { ProbeResult } from '@backupmx/shared/rules/hysteresis.ts';
import type { ProbeResult } from '@backupmx/shared/rules/hysteresis.ts';

export interface ProbeTarget {
  host: string;
  port: number;
}

export interface ProbeOptions {
  /** Budget for connect, greeting and EHLO together. */
  timeoutMs: number;
  heloName: string;
  /** CAs the certificate is checked against; undefined: the runtime's defaults. */
  ca?: string[] | undefined;
}

type Phase = 'connection' | 'greeting' | 'EHLO reply' | 'STARTTLS reply' | 'TLS handshake' | 'QUIT reply';

/** The TLS handshake on `socket` after STARTTLS; rejects on failure, the timeout included (the socket is destroyed). */
function handshake(socket: net.Socket, target: ProbeTarget, ca: string[] | undefined): { secure: TLSSocket; done: Promise<void> } {
  const secure = tls.connect({ socket, rejectUnauthorized: false, ...chainOnly, ...(net.isIP(target.host) ? {} : { servername: target.host }), ...(ca ? { ca } : {}) });
  const done = new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', () => resolve());
    secure.once('error', reject);
    secure.once('close', () => reject(new Error('connection closed during the TLS handshake')));
  });
  return { secure, done };
}

export async function probeSmtp(target: ProbeTarget, options: ProbeOptions): Promise<ProbeResult> {
  const started = performance.now();
  const elapsed = (): number => Math.round(performance.now() - started);
  if (/[\r\n]/.test(options.heloName)) return { ok: false, latencyMs: 0, error: 'invalid heloName: contains CR or LF' };

  let socket: net.Socket;
  let secure: TLSSocket | null = null;
  try {
    socket = net.connect({ host: target.host, port: target.port });
  } catch (err) {
    // Synchronous argument errors, e.g. a port out of range.
    return { ok: false, latencyMs: elapsed(), error: describeError(toError(err)) };
  }
  socket.setNoDelay(true);
  let phase: Phase = 'connection';
  socket.once('connect', () => {
    if (phase === 'connection') phase = 'greeting';
  });
  const reader = smtpReplyReader(socket);
  // One budget for the whole probe: when it runs out the socket goes, and the step waiting says so.
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    (secure ?? socket).destroy();
  }, options.timeoutMs);
  let session = reader;

  const reply = async (next: Phase): Promise<SmtpReplyLines> => {
    phase = next;
    try {
      return await session.next();
    } catch (err) {
      throw new Error(timedOut ? `timeout after ${options.timeoutMs} ms waiting for ${phase}` : `${describeError(toError(err))} while waiting for ${phase}`);
    }
  };

  try {
    const greeting = await reply(phase === 'connection' ? 'connection' : 'greeting');
    if (greeting.code < 200 || greeting.code > 299) return { ok: false, latencyMs: elapsed(), error: `greeting: ${replyText(greeting)}` };
    socket.write(`EHLO ${options.heloName}\r\n`);
    const ehlo = await reply('EHLO reply');
    if (ehlo.code !== 250) return { ok: false, latencyMs: elapsed(), error: `EHLO: ${replyText(ehlo)}` };
    const latencyMs = elapsed();
    // Past EHLO the verdict is in; what follows is about TLS. A failure there ends the probe
    // with the facts, and any answer to QUIT, or none within the budget, ends it too.
    let facts: TlsFacts = NOT_OFFERED;
    if (ehlo.lines.some((line) => /^250[ -]STARTTLS\b/i.test(line))) {
      socket.write('STARTTLS\r\n');
      const answer = await reply('STARTTLS reply').catch((err: Error) => err);
      if (answer instanceof Error) facts = unsecuredFacts({ error: answer.message });
      else if (answer.code !== 220) facts = unsecuredFacts({ refused: replyText(answer) });
      else {
        phase = 'TLS handshake';
        reader.detach();
        socket.on('error', () => {});
        const started = handshake(socket, target, options.ca);
        secure = started.secure;
        try {
          await started.done;
          facts = securedFacts(secure, target.host);
          session = smtpReplyReader(secure);
        } catch (err) {
          facts = unsecuredFacts({ error: timedOut ? `timeout after ${options.timeoutMs} ms during the TLS handshake` : describeError(toError(err)) });
          return { ok: true, latencyMs, greeting: replyText(greeting), tls: facts };
        }
      }
    }
    (secure ?? socket).write('QUIT\r\n');
    await reply('QUIT reply').catch(() => {});
    return { ok: true, latencyMs, greeting: replyText(greeting), tls: facts };
  } catch (err) {
    return { ok: false, latencyMs: elapsed(), error: (err as Error).message };
  } finally {
    clearTimeout(timer);
    secure?.destroy();
    socket.destroy();
  }
}

function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}

/** `ECONNREFUSED: connect ECONNREFUSED 127.0.0.1:25`, also for the AggregateError of happy eyeballs. */
function describeError(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code;
  let message = err.message;
  if (!message && err instanceof AggregateError) {
    message = err.errors.map((e: unknown) => (e instanceof Error ? e.message : String(e))).join('; ');
  }
  if (code && !message.includes(code)) return message ? `${code}: ${message}` : code;
  return message || 'socket error';
}
