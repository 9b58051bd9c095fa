import type { SMTPServer } from 'smtp-server';
import { messagesAccepted, smtpConnections, smtpConnectionsActive, smtpRejections } from '@backupmx/shared/runtime/metrics.ts';

type Stage = 'connect' | 'mail' | 'rcpt' | 'data';
const HANDLERS: Array<[name: 'onConnect' | 'onMailFrom' | 'onRcptTo' | 'onData', stage: Stage]> = [
  ['onConnect', 'connect'],
  ['onMailFrom', 'mail'],
  ['onRcptTo', 'rcpt'],
  ['onData', 'data'],
];
/** smtp-server's reply codes for a handler error without responseCode. */
const DEFAULT_CODE: Record<Stage, number> = { connect: 554, mail: 550, rcpt: 550, data: 450 };

/** Reply code and enhanced status code (the reason) of an error a handler gave smtp-server. */
export function rejectionLabels(stage: Stage, error: Error & { responseCode?: number }): { stage: Stage; code: string; status: string } {
  const status = /^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)/.exec(error.message)?.[1] ?? '';
  return { stage, code: String(error.responseCode ?? DEFAULT_CODE[stage]), status };
}

/**
 * Count connections, accepted messages and refusals of an SMTP listener, whatever policy refused:
 * every handler's callback is observed on its way back to smtp-server. Returns the same server.
 */
export function observeSmtp(server: SMTPServer): SMTPServer {
  server.server.on('connection', (socket: import('node:net').Socket) => {
    smtpConnections.inc();
    smtpConnectionsActive.inc();
    socket.once('close', () => smtpConnectionsActive.dec());
  });
  // Refusals smtp-server gives without asking the handlers below (see smtp-server-patches.ts, 7).
  (server as unknown as { options: { onLibraryRefusal?: (verb: string, code: number, status: string) => void } }).options.onLibraryRefusal = (verb, code, status) =>
    smtpRejections.inc({ stage: verb.toLowerCase() as Stage, code: String(code), status });
  const handlers = server as unknown as Record<string, (...args: unknown[]) => unknown>;
  for (const [name, stage] of HANDLERS) {
    const original = handlers[name];
    if (typeof original !== 'function') continue;
    handlers[name] = function (this: unknown, ...args: unknown[]) {
      const callback = args.at(-1) as (error?: (Error & { responseCode?: number }) | null, ...rest: unknown[]) => void;
      args[args.length - 1] = (error?: (Error & { responseCode?: number }) | null, ...rest: unknown[]) => {
        if (error) smtpRejections.inc(rejectionLabels(stage, error));
        else if (stage === 'data') messagesAccepted.inc();
        callback(error, ...rest);
      };
      return original.apply(this, args);
    };
  }
  return server;
}
