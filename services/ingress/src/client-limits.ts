import { clientKey } from '@backupmx/shared/rules/ip.ts';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';

export interface LimitSettings {
  /** Our name, for the 421 text. */
  hostname: string;
  maxConnections: number;
  maxConnectionsPerClient: number;
  /** Per client and minute; 0: no limit. */
  messagesPerMinute: number;
  recipientsPerMinute: number;
}

const WINDOW_MS = 60_000;

interface Window {
  start: number;
  messages: number;
  recipients: number;
}

/**
 * Connection counts and per-minute message and recipient counts by client, with the replies of
 * Postfix's anvil-based limits: 421 4.7.0 at connect, 450 4.7.1 at RCPT. Fixed one-minute windows;
 * `now` is passed in so that the rules can be tested without waiting.
 */
export function createClientLimits(settings: LimitSettings) {
  const connections = new Map<string, number>();
  const windows = new Map<string, Window>();
  let total = 0;
  let lastSweep = 0;

  function window(key: string, now: number): Window {
    let current = windows.get(key);
    if (!current || now - current.start >= WINDOW_MS) {
      current = { start: now, messages: 0, recipients: 0 };
      windows.set(key, current);
    }
    if (now - lastSweep >= WINDOW_MS) {
      lastSweep = now;
      for (const [other, value] of windows) if (now - value.start >= WINDOW_MS) windows.delete(other);
    }
    return current;
  }

  return {
    /** Admit a new connection (and count it), or the 421 to refuse it with. */
    open(address: string): SmtpReply | null {
      const key = clientKey(address);
      if (total >= settings.maxConnections) {
        return { code: 421, status: '4.7.0', text: `${settings.hostname} Error: too many connections, try again later` };
      }
      const mine = connections.get(key) ?? 0;
      if (mine >= settings.maxConnectionsPerClient) {
        return { code: 421, status: '4.7.0', text: `${settings.hostname} Error: too many connections from ${key}` };
      }
      connections.set(key, mine + 1);
      total += 1;
      return null;
    },
    /** A connection that open() admitted has ended. */
    close(address: string): void {
      const key = clientKey(address);
      const mine = connections.get(key) ?? 0;
      if (mine <= 1) connections.delete(key);
      else connections.set(key, mine - 1);
      total = Math.max(0, total - 1);
    },
    /**
     * May this client add a recipient now? `newMessage`: it is the transaction's first recipient,
     * which starts a message. Counts it when allowed; returns the 450 otherwise.
     */
    recipient(address: string, newMessage: boolean, now: number): SmtpReply | null {
      const key = clientKey(address);
      const current = window(key, now);
      if (newMessage && settings.messagesPerMinute > 0 && current.messages >= settings.messagesPerMinute) {
        return { code: 450, status: '4.7.1', text: `Error: too much mail from ${key}, try again later` };
      }
      if (settings.recipientsPerMinute > 0 && current.recipients >= settings.recipientsPerMinute) {
        return { code: 450, status: '4.7.1', text: `Error: too many recipients from ${key}, try again later` };
      }
      if (newMessage) current.messages += 1;
      current.recipients += 1;
      return null;
    },
    /** Connections counted now: in all, and the number of distinct clients. */
    counts(): { connections: number; clients: number } {
      return { connections: total, clients: connections.size };
    },
  };
}

export type ClientLimits = ReturnType<typeof createClientLimits>;
