import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { loadConfig, type Config } from '../../shared/src/runtime/config.ts';
import { createLogger } from '../../shared/src/runtime/logger.ts';
import { createMemoryBroker } from '../../shared/src/broker/memory-broker.ts';
import { openSqliteStore } from '../../shared/src/store/sqlite-store.ts';
import { startIngress } from '../../services/ingress/src/ingress.ts';
import { startSpool } from '../../services/spool/src/spool.ts';
import { createSweeper } from '../../services/spool/src/sweep.ts';
import { createDeliverer, type DelivererOptions } from '../../services/deliverer/src/deliverer.ts';
import type { Logger } from '../../shared/src/runtime/logger.ts';
import { sendRaw } from './reports.ts';
import { freePort, tempDir, waitFor } from './util.ts';

export interface PeerMessage {
  from: string;
  to: string[];
  raw: Buffer;
  /** MAIL FROM parameters as the peer parsed them (xtext decoded), e.g. { RET: 'HDRS' }. */
  mailArgs: Record<string, unknown>;
  /** RCPT TO parameters per recipient. */
  rcptArgs: Record<string, Record<string, unknown>>;
  /** The message came over TLS (STARTTLS). */
  secure: boolean;
}

/**
 * What the peer does; change it while the test runs. `rcpt` maps a recipient to the full reply it
 * gets at RCPT (`550 5.1.1 User unknown`, `452 4.2.2 Mailbox full`); `data`: the reply to the end
 * of data instead of 250; `greeting`: refuse every connection with this reply; `dropMidData`: close
 * the connection after the first chunk of message data.
 */
export interface PeerBehaviour {
  dsn?: boolean;
  rcpt?: Record<string, string>;
  data?: string | null;
  greeting?: string | null;
  dropMidData?: boolean;
}

function replyErrorOf(reply: string): Error & { responseCode: number } {
  const [code, ...text] = reply.split(' ');
  return Object.assign(new Error(text.join(' ')), { responseCode: Number(code) });
}

/**
 * A real SMTP server (smtp-server) playing a primary or a smarthost: records every message it
 * accepts with its envelope and DSN parameters. With `setup.tls` (PEM key and certificate) it
 * offers STARTTLS; `setup.port` listens on that port (a peer restarted in place).
 */
export async function startPeer(behaviour: PeerBehaviour = {}, setup: { tls?: { key: string; cert: string }; port?: number } = {}) {
  const messages: PeerMessage[] = [];
  let connections = 0;
  let mailCommands = 0;
  const server: SMTPServer = new SMTPServer({
    disabledCommands: setup.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    ...(setup.tls ? { key: setup.tls.key, cert: setup.tls.cert } : {}),
    logger: false,
    closeTimeout: 500,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: !behaviour.dsn,
    onConnect(_session, callback) {
      connections += 1;
      if (behaviour.greeting) return callback(replyErrorOf(behaviour.greeting));
      callback();
    },
    onMailFrom(_address, _session, callback) {
      mailCommands += 1;
      callback();
    },
    onRcptTo(address, _session, callback) {
      const reply = behaviour.rcpt?.[address.address];
      callback(reply ? replyErrorOf(reply) : undefined);
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      let dropped = false;
      stream.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        if (behaviour.dropMidData && !dropped) {
          dropped = true;
          // smtp-server keeps its connections (with their sockets) in server.connections.
          const connection = [...(server as unknown as { connections: Set<{ id: string; _socket: { destroy(): void } }> }).connections].find((entry) => entry.id === session.id);
          connection?._socket.destroy();
        }
      });
      stream.on('end', () => {
        if (dropped) return callback(new Error('dropped'));
        if (behaviour.data) return callback(replyErrorOf(behaviour.data));
        const mailFrom = session.envelope.mailFrom;
        messages.push({
          from: mailFrom ? mailFrom.address : '',
          to: session.envelope.rcptTo.map((rcpt) => rcpt.address),
          raw: Buffer.concat(chunks),
          mailArgs: { ...((mailFrom && mailFrom.args) || {}) },
          rcptArgs: Object.fromEntries(session.envelope.rcptTo.map((rcpt) => [rcpt.address, { ...(rcpt.args || {}) }])),
          secure: session.secure,
        });
        callback();
      });
    },
  });
  server.on('error', () => {});
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(setup.port ?? 0, '127.0.0.1', () => resolve());
  });
  return {
    port: (server.server.address() as AddressInfo).port,
    messages,
    behaviour,
    connections: () => connections,
    /** MAIL FROM commands the peer has seen (also of transactions it did not complete). */
    mailCommands: () => mailCommands,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

export type Peer = Awaited<ReturnType<typeof startPeer>>;

/**
 * The whole system in this process (in-process broker, fresh SQLite store): ingress, spool with
 * its sweep, and a deliverer with the given MX seams. Sender authentication is off (no DNS).
 * `dataDir`: use (and keep) this DATA_DIR instead of a fresh one (a restart); `log`: the logger.
 */
export async function startSystem(env: Record<string, string>, options: { deliverer?: DelivererOptions; deliver?: boolean; dataDir?: string; log?: Logger } = {}) {
  const dir = options.dataDir ? { path: options.dataDir, remove: () => {} } : tempDir();
  const port = await freePort();
  const config: Config = loadConfig({
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(port),
    SMTP_HOSTNAME: 'backup.example.test',
    RELAY_DOMAINS: 'example.test',
    DATA_DIR: dir.path,
    SENDER_AUTH: 'false',
    RETRY_SCHEDULE: '1h',
    ...env,
  });
  const log = options.log ?? createLogger('test', process.env.TEST_LOG_LEVEL ?? 'silent');
  const store = await openSqliteStore(join(dir.path, 'spool.sqlite'));
  const broker = createMemoryBroker(join(dir.path, 'dead'), log);
  await startSpool(config, store, broker, log);
  const sweeper = createSweeper(config, store, broker, log);
  sweeper.start();
  const deliverer = options.deliver === false ? null : createDeliverer(config, store, broker, log, options.deliverer);
  await deliverer?.start();
  const ingress = await startIngress(config, broker, log, { store });
  return {
    port,
    dataDir: dir.path,
    config,
    store,
    broker,
    sweeper,
    async close() {
      await ingress.stop();
      await sweeper.stop();
      await deliverer?.stop();
      await broker.close();
      await store.close();
      dir.remove();
    },
  };
}

export type System = Awaited<ReturnType<typeof startSystem>>;

/** Send one message (from sender@origin.test to `recipient`) and wait for its first recorded attempt: that delivery. */
export async function sendAndAttempt(system: System, subject: string, recipient = 'a@example.test') {
  const { id, final } = await sendRaw(system.port, { from: 'sender@origin.test', rcpts: [{ address: recipient }], message: `From: <sender@origin.test>\r\nSubject: ${subject}\r\n\r\nHello.\r\n` });
  if (!final.startsWith('250 ')) throw new Error(`${subject}: not accepted: ${final}`);
  return waitFor(`the attempt of ${subject}`, async () => {
    const delivery = (await system.store.getMessage(id ?? ''))?.deliveries[0];
    return delivery?.attempts ? delivery : null;
  });
}
