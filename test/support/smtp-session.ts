import { connect, type Socket } from 'node:net';

/**
 * A bare SMTP client that shows the exact replies: `command('RCPT TO:<a@b>')` resolves to the last
 * line of the reply (e.g. `550 5.7.1 ...`), `commandLines` to every line of a multi-line reply.
 */
export async function openSession(port: number, host = '127.0.0.1', localAddress?: string) {
  const session = smtpReplies(connect({ port, host, ...(localAddress ? { localAddress } : {}) }));
  return { greeting: await session.reply(), ...session };
}

/** The same client over a socket that is already open (a TLS socket after STARTTLS, say). */
export function smtpReplies(socket: Socket) {
  socket.setEncoding('latin1');
  let buffer = '';
  const replies: string[][] = [];
  let current: string[] = [];
  let waiting: ((reply: string[]) => void) | null = null;
  let closed = false;
  socket.on('data', (data: string) => {
    buffer += data;
    let end: number;
    while ((end = buffer.indexOf('\r\n')) !== -1) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      current.push(line);
      if (/^\d{3}(?: |$)/.test(line)) {
        const reply = current;
        current = [];
        if (waiting) {
          const resolve = waiting;
          waiting = null;
          resolve(reply);
        } else replies.push(reply);
      }
    }
  });
  socket.on('close', () => {
    closed = true;
    if (waiting) waiting(['(connection closed)']);
  });
  socket.on('error', () => {});
  const next = (timeoutMs = 15_000) =>
    new Promise<string[]>((resolve, reject) => {
      const queued = replies.shift();
      if (queued) return resolve(queued);
      if (closed) return resolve(['(connection closed)']);
      const timer = setTimeout(() => reject(new Error('no reply within timeout')), timeoutMs);
      waiting = (reply) => {
        clearTimeout(timer);
        resolve(reply);
      };
    });
  return {
    /** Send one command line; resolves to the last line of its reply. */
    async command(line: string): Promise<string> {
      socket.write(`${line}\r\n`);
      return (await next()).at(-1) ?? '';
    },
    /** The whole (multi-line) reply to a command. */
    async commandLines(line: string): Promise<string[]> {
      socket.write(`${line}\r\n`);
      return next();
    },
    /** Write raw bytes (message data) and read the reply that follows. */
    async data(raw: string | Buffer): Promise<string> {
      socket.write(raw);
      return (await next()).at(-1) ?? '';
    },
    write(raw: string | Buffer): void {
      socket.write(raw);
    },
    reply: async () => (await next()).at(-1) ?? '',
    closed: () => closed,
    close(): void {
      socket.destroy();
    },
    /** Stop reading (the socket is handed to TLS). */
    detach(): void {
      socket.removeAllListeners('data');
    },
  };
}
