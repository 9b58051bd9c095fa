import type { Socket } from 'node:net';

/** One SMTP reply: its code and every line as received (multi-line replies have several). */
export interface SmtpReplyLines {
  code: number;
  lines: string[];
}

/** Longest reply we read before giving up on the peer. */
const MAX_REPLY_BYTES = 64 * 1024;

/**
 * The replies a peer sends on `socket`, in order, for the small SMTP clients that need no more
 * (the health probe, the recipient callout). `next()` rejects with the socket's error, or when the
 * peer closes, sends a line that is not a reply, or a reply over 64 KiB; every later `next()` gets
 * the same error. The reader keeps an 'error' listener, so a late socket error never crashes.
 */
export function smtpReplyReader(socket: Socket) {
  let buffer = '';
  let lines: string[] = [];
  const ready: SmtpReplyLines[] = [];
  let waiting: { resolve: (reply: SmtpReplyLines) => void; reject: (error: Error) => void } | null = null;
  let failure: Error | null = null;

  const fail = (error: Error) => {
    failure ??= error;
    waiting?.reject(failure);
    waiting = null;
  };
  socket.setEncoding('latin1');
  const onData = (chunk: string) => {
    buffer += chunk;
    let newline: number;
    while ((newline = buffer.indexOf('\n')) !== -1) {
      const line = buffer.slice(0, newline).replace(/\r$/, '');
      buffer = buffer.slice(newline + 1);
      const match = /^(\d{3})([ -]?)/.exec(line);
      if (!match) return fail(new Error(`malformed reply line: ${JSON.stringify(line.slice(0, 200))}`));
      lines.push(line);
      if (match[2] === '-') continue;
      const reply = { code: Number(match[1]), lines };
      lines = [];
      if (waiting) {
        waiting.resolve(reply);
        waiting = null;
      } else ready.push(reply);
    }
    if (buffer.length + lines.join('').length > MAX_REPLY_BYTES) fail(new Error(`reply longer than ${MAX_REPLY_BYTES} bytes`));
  };
  const onError = (error: Error) => fail(error);
  const onClose = () => fail(new Error('connection closed by peer'));
  socket.on('data', onData);
  socket.on('error', onError);
  socket.on('close', onClose);
  return {
    /** Stop reading `socket` (it is handed to TLS after STARTTLS); its errors are then the new owner's to handle. */
    detach(): void {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    },
    next(): Promise<SmtpReplyLines> {
      const reply = ready.shift();
      if (reply) return Promise.resolve(reply);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject };
      });
    },
  };
}

/** A reply as one line of text: its lines joined by a space. */
export const replyText = (reply: SmtpReplyLines): string => reply.lines.join(' ');
