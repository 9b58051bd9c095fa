/**
 * One SMTP health probe: connect, read the greeting, EHLO, QUIT.
 *
 * Plain node:net with the shared reply reader rather than nodemailer's SMTPConnection: that client
 * upgrades to STARTTLS on its own, does not hand back the greeting, and its ~2000 lines cover far
 * more than four steps of plain SMTP. Here every outcome is one of a few messages, and the promise
 * always resolves.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import { replyText, smtpReplyReader, type SmtpReplyLines } from '@backupmx/shared/mail/smtp-reply-reader.ts';

export type ProbeResult =
  | { ok: true; latencyMs: number; greeting: string }
  | { ok: false; latencyMs: number; error: string };

export interface ProbeTarget {
  host: string;
  port: number;
}

export interface ProbeOptions {
  /** Budget for connect, greeting and EHLO together. */
  timeoutMs: number;
  heloName: string;
}

type Phase = 'connection' | 'greeting' | 'EHLO reply' | 'QUIT reply';

export async function probeSmtp(target: ProbeTarget, options: ProbeOptions): Promise<ProbeResult> {
  const started = performance.now();
  const elapsed = (): number => Math.round(performance.now() - started);
  if (/[\r\n]/.test(options.heloName)) return { ok: false, latencyMs: 0, error: 'invalid heloName: contains CR or LF' };

  let socket: net.Socket;
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
    socket.destroy();
  }, options.timeoutMs);

  const reply = async (next: Phase): Promise<SmtpReplyLines> => {
    phase = next;
    try {
      return await reader.next();
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
    const success: ProbeResult = { ok: true, latencyMs: elapsed(), greeting: replyText(greeting) };
    // Past EHLO the verdict is in: any answer to QUIT, or none within the budget, ends the probe.
    socket.write('QUIT\r\n');
    await reply('QUIT reply').catch(() => {});
    return success;
  } catch (err) {
    return { ok: false, latencyMs: elapsed(), error: (err as Error).message };
  } finally {
    clearTimeout(timer);
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
