/**
 * Stand-ins for Postfix's smtp-source and smtp-sink, used by bench/run.ts when those are not
 * installed: `nodeSource` sends like `smtp-source -s SESSIONS -m MESSAGES -l SIZE [-d]`, and
 * `node bench/fallback.ts sink DIR PORT` runs an smtp-server that writes each message to DIR/m.N
 * (before answering 250, so counting files in DIR counts accepted messages).
 */
import { Buffer } from 'node:buffer';
import { writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';

export interface SourceResult {
  accepted: number;
  failed: number;
  /** Failure text -> count. */
  errors: Map<string, number>;
}

/** Roughly what smtp-source sends: a few headers, then `size` bytes of body in 80-byte lines. */
function message(index: number, from: string, to: string, size: number): Buffer {
  const lines: string[] = [];
  let left = size;
  for (let n = 1; left > 0; n++) {
    const line = `${n}${'X'.repeat(78)}`.slice(0, Math.max(1, left - 2));
    lines.push(line);
    left -= line.length + 2;
  }
  const head = [`From: <${from}>`, `To: <${to}>`, `Date: ${new Date().toUTCString()}`, `Message-Id: <${process.pid}.${index}@${hostname()}>`, ''];
  return Buffer.from([...head, ...lines, ''].join('\r\n'), 'latin1');
}

export async function nodeSource(options: { port: number; messages: number; sessions: number; size: number; reuse: boolean; from: string; to: string }): Promise<SourceResult> {
  const result: SourceResult = { accepted: 0, failed: 0, errors: new Map() };
  let next = 0;
  async function session(): Promise<void> {
    // Without reuse, an unpooled transport opens one connection per message, as smtp-source does.
    const transport = nodemailer.createTransport({
      host: '127.0.0.1',
      port: options.port,
      secure: false,
      ignoreTLS: true,
      name: hostname(),
      ...(options.reuse ? { pool: true, maxConnections: 1, maxMessages: Infinity } : {}),
    });
    try {
      while (next < options.messages) {
        const index = next++;
        try {
          const info = await transport.sendMail({ envelope: { from: options.from, to: [options.to] }, raw: message(index, options.from, options.to, options.size) });
          if (/^250 /.test(info.response)) result.accepted++;
          else throw new Error(info.response);
        } catch (error) {
          result.failed++;
          const text = String((error as { response?: string }).response ?? (error as Error).message);
          result.errors.set(text, (result.errors.get(text) ?? 0) + 1);
        }
      }
    } finally {
      transport.close();
    }
  }
  await Promise.all(Array.from({ length: options.sessions }, session));
  return result;
}

async function sink(dir: string, port: number): Promise<void> {
  let n = 0;
  const server = new SMTPServer({
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    closeTimeout: 500,
    socketTimeout: 300_000,
    maxClients: 1024,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', () => {
        const envelope = `X-Mail-Args: <${session.envelope.mailFrom ? session.envelope.mailFrom.address : ''}>\r\n${session.envelope.rcptTo.map((r) => `X-Rcpt-Args: <${r.address}>\r\n`).join('')}`;
        writeFile(join(dir, `m.${++n}`), Buffer.concat([Buffer.from(envelope, 'latin1'), ...chunks])).then(() => callback(), (error: Error) => callback(error));
      });
    },
  });
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (import.meta.main) {
  const [command, dir, port] = process.argv.slice(2);
  if (command !== 'sink' || !dir || !port) {
    process.stderr.write('usage: node bench/fallback.ts sink DIR PORT\n');
    process.exit(2);
  }
  await sink(dir, Number(port));
}
