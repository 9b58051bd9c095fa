import type { Readable } from 'node:stream';
import nodemailer, { type Transporter } from 'nodemailer';
import { formatTarget, type Target } from '@backupmx/shared/config.ts';
import type { SendError, SendResult } from './outcomes.ts';

export interface ClientOptions {
  /** Our name in EHLO (SMTP_HOSTNAME). */
  name: string;
  /** Connections to one target at once. */
  maxConnections: number;
}

export type Attempt = { target: string; result: SendResult } | { target: string; error: SendError };

/** An error before any reply of the target to our transaction: try the next target. */
function unreachable(error: SendError & { code?: string; command?: string }): boolean {
  if (error.responseCode === undefined) return true;
  return error.command === 'CONN' || (error.code === 'EPROTOCOL' && error.responseCode < 500 && !error.rejectedErrors);
}

/**
 * Relays stored messages unchanged to next-hop targets, through one nodemailer pool per target
 * (connections reused across messages; no re-queues inside the pool: retries come from the spool).
 */
export function createSmtpClient(options: ClientOptions) {
  const pools = new Map<string, Transporter>();

  function pool(target: Target): Transporter {
    const key = formatTarget(target);
    let transport = pools.get(key);
    if (!transport) {
      transport = nodemailer.createTransport({
        host: target.host,
        port: target.port,
        secure: false,
        name: options.name,
        pool: true,
        maxConnections: options.maxConnections,
        maxMessages: 1000,
        maxRequeues: 0,
        // Close a cached connection after 5 s idle (Postfix keeps them 2 s): a primary that is
        // flushed is not left holding our sessions.
        idleTimeout: 5000,
        // Opportunistic STARTTLS without certificate checks, as Postfix's smtp_tls_security_level=may.
        tls: { rejectUnauthorized: false },
        connectionTimeout: 30_000,
        greetingTimeout: 30_000,
        socketTimeout: 300_000,
        logger: false,
      });
      pools.set(key, transport);
    }
    return transport;
  }

  return {
    /**
     * Send one message to the first target that answers (RFC 5321 5.1: the next on connection
     * failure or a 4xx greeting). `body` is called again for each target tried.
     */
    async send(targets: readonly Target[], envelope: { from: string; to: string[] }, body: () => Promise<Readable>): Promise<Attempt> {
      let last: Attempt | null = null;
      for (const target of targets) {
        try {
          const result = (await pool(target).sendMail({ envelope, raw: await body() })) as SendResult;
          return { target: formatTarget(target), result };
        } catch (error) {
          last = { target: formatTarget(target), error: error as SendError };
          if (!unreachable(error as SendError)) return last;
        }
      }
      return last ?? { target: '', error: { message: 'no next-hop target' } };
    },
    close(): void {
      for (const transport of pools.values()) transport.close();
      pools.clear();
    },
  };
}
