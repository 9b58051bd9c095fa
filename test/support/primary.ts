import { Buffer } from 'node:buffer';
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';

export interface Received {
  from: string;
  to: string[];
  raw: Buffer;
}

/**
 * A real SMTP server playing the primary: records every message it accepts (envelope and exact
 * bytes), on `host` (127.0.0.1). `reject` maps a recipient to the reply code it gets at RCPT; `delayMs` slows each DATA.
 */
export async function startPrimary(options: { host?: string; port?: number; reject?: Record<string, number>; delayMs?: number } = {}) {
  const messages: Received[] = [];
  /** Every SMTP session in the order they connected, and whether it got to MAIL FROM (health probes do not). */
  const sessions: Array<{ id: string; mail: boolean }> = [];
  const server = new SMTPServer({
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    closeTimeout: 500,
    hideENHANCEDSTATUSCODES: false,
    onConnect(session, callback) {
      sessions.push({ id: session.id, mail: false });
      callback();
    },
    onMailFrom(_address, session, callback) {
      const known = sessions.find((entry) => entry.id === session.id);
      if (known) known.mail = true;
      callback();
    },
    onRcptTo(address, _session, callback) {
      const code = options.reject?.[address.address];
      if (code) return callback(Object.assign(new Error(`${code >= 500 ? '5.1.1' : '4.2.1'} no thanks`), { responseCode: code }));
      callback();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.on('end', async () => {
        if (options.delayMs) await new Promise((resolve) => setTimeout(resolve, options.delayMs));
        messages.push({
          from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          to: session.envelope.rcptTo.map((rcpt) => rcpt.address),
          raw: Buffer.concat(chunks),
        });
        callback();
      });
    },
  });
  // A client that vanishes mid-session (a deliverer killed with SIGKILL) resets its connection:
  // smtp-server reports that as an 'error' event, which a real primary shrugs off.
  server.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  return {
    port: (server.server.address() as AddressInfo).port,
    messages,
    sessions,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
