/**
 * One SMTP health probe: connect, read the greeting, EHLO, QUIT.
 *
 * A small line reader over node:net rather than nodemailer's SMTPConnection:
 * that client upgrades to STARTTLS on its own, does not hand back the greeting,
 * and its ~2000 lines cover far more than four steps of plain SMTP. Here every
 * outcome is one of a few messages, and the promise always resolves.
 */
import net from 'node:net';
import { performance } from 'node:perf_hooks';

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

/** Longest line or multi-line reply we accept before giving up on the peer. */
const MAX_REPLY_BYTES = 64 * 1024;

interface Reply {
  code: number;
  /** The reply's lines as received, joined by a space: `421 4.3.2 Service not available`. */
  text: string;
}

type Phase = 'connection' | 'greeting' | 'EHLO reply' | 'QUIT reply';

export function probeSmtp(target: ProbeTarget, options: ProbeOptions): Promise<ProbeResult> {
  const started = performance.now();
  const elapsed = (): number => Math.round(performance.now() - started);

  if (/[\r\n]/.test(options.heloName)) {
    return Promise.resolve({ ok: false, latencyMs: 0, error: 'invalid heloName: contains CR or LF' });
  }

  return new Promise<ProbeResult>((resolve) => {
    let phase: Phase = 'connection';
    let done = false;
    let buffer = '';
    let lines: string[] = [];
    /** Set once EHLO succeeded: the result, held back until QUIT is answered or the budget ends. */
    let success: ProbeResult | null = null;
    let greeting = '';

    let socket: net.Socket;
    try {
      socket = net.connect({ host: target.host, port: target.port });
    } catch (err) {
      // Synchronous argument errors, e.g. a port out of range.
      resolve({ ok: false, latencyMs: elapsed(), error: describeError(toError(err)) });
      return;
    }
    socket.setEncoding('latin1');
    socket.setNoDelay(true);

    const finish = (result: ProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('connect', onConnect);
      socket.off('data', onData);
      socket.off('end', onClosed);
      socket.off('close', onClosed);
      // Keep a no-op 'error' listener: a destroyed socket may still report a late error.
      socket.off('error', onError);
      socket.on('error', ignore);
      socket.destroy();
      resolve(result);
    };

    const fail = (error: string): void => {
      // Past EHLO the verdict is in; trouble around QUIT does not change it.
      finish(success ?? { ok: false, latencyMs: elapsed(), error });
    };

    const timer = setTimeout(() => {
      fail(`timeout after ${options.timeoutMs} ms waiting for ${phase}`);
    }, options.timeoutMs);

    function onConnect(): void {
      phase = 'greeting';
    }

    function onError(err: Error): void {
      fail(`${describeError(err)} while waiting for ${phase}`);
    }

    function onClosed(): void {
      fail(`connection closed by peer while waiting for ${phase}`);
    }

    function onData(chunk: string): void {
      buffer += chunk;
      let newline: number;
      while (!done && (newline = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, newline).replace(/\r$/, '');
        buffer = buffer.slice(newline + 1);
        onLine(line);
      }
      if (!done && buffer.length + lines.join('').length > MAX_REPLY_BYTES) {
        fail(`reply longer than ${MAX_REPLY_BYTES} bytes while waiting for ${phase}`);
      }
    }

    function onLine(line: string): void {
      const match = /^(\d{3})(?:([ -])(.*))?$/.exec(line);
      if (!match) {
        fail(`malformed reply line while waiting for ${phase}: ${JSON.stringify(line.slice(0, 200))}`);
        return;
      }
      lines.push(line);
      if (match[2] === '-') return; // continuation of a multi-line reply
      const reply: Reply = { code: Number(match[1]), text: lines.join(' ') };
      lines = [];
      onReply(reply);
    }

    function onReply(reply: Reply): void {
      switch (phase) {
        case 'connection': // cannot happen: data only flows after connect
        case 'greeting':
          if (reply.code < 200 || reply.code > 299) {
            fail(`greeting: ${reply.text}`);
            return;
          }
          greeting = reply.text;
          phase = 'EHLO reply';
          socket.write(`EHLO ${options.heloName}\r\n`);
          return;
        case 'EHLO reply':
          if (reply.code !== 250) {
            fail(`EHLO: ${reply.text}`);
            return;
          }
          success = { ok: true, latencyMs: elapsed(), greeting };
          phase = 'QUIT reply';
          socket.write('QUIT\r\n');
          return;
        case 'QUIT reply': // any answer to QUIT (221, or anything else) ends a successful probe
          if (success) finish(success);
          return;
      }
    }

    socket.on('connect', onConnect);
    socket.on('data', onData);
    socket.on('end', onClosed);
    socket.on('close', onClosed);
    socket.on('error', onError);
  });
}

function ignore(): void {}

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
