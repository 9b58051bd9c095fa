import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { formatTarget, type Target } from '@backupmx/shared/runtime/config.ts';
import { chainOnly, securedFacts, trustAnchors, unsecuredFacts } from '@backupmx/shared/mail/peer-tls.ts';
import { NOT_OFFERED, OPPORTUNISTIC, tlsRefusal, tlsRequired, type TlsFacts, type TlsRequirement } from '../../../shared/src/rules/next-hop-tls.ts';
import type { SendError, SendResult } from '../../../shared/src/rules/outcomes.ts';

export interface ClientOptions {
  /** Our name in EHLO (SMTP_HOSTNAME). */
  name: string;
  /** Connections to one next hop at once. */
  maxConnections: number;
  /** Close a cached connection after this long idle (Postfix keeps them 2 s). */
  idleMs?: number;
  connectionTimeoutMs?: number;
  /** Stands in for the system's CAs (SYSTEM_TRUST); tests give their own CA. */
  systemCa?: string[];
}

/** What a hop's TLS must satisfy before any mail goes to it. */
export interface HopTls {
  requirement: TlsRequirement;
  /**
   * Checked as well, for logs only (an MTA-STS policy in testing mode); the connection checks the
   * chain against its trust anchors when `requirement` itself does not verify.
   */
  audit?: TlsRequirement;
}

/** One address to try; `name` is the host's DNS name when the address came from an MX lookup. */
export interface Hop extends Target {
  name?: string;
}

/** One recipient and its RFC 3461 parameters (passed on when the next hop offers DSN). */
export interface OutgoingRecipient {
  address: string;
  notify?: string[];
  orcpt?: string;
}

export interface OutgoingMessage {
  from: string;
  recipients: OutgoingRecipient[];
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  size?: number;
  body8bit?: boolean;
}

/**
 * What one transaction gave. `target` names the hop (`host:port`, or `name[address]:port` for an
 * MX host); `remoteMta` is the host name for a report's Remote-MTA; `dsn` tells whether the hop
 * advertised DSN (so it, not we, reports on what it accepted: RFC 3461 5.2). A `result` may carry
 * `rejectedErrors`, and so may an `error` (the RCPT replies before DATA failed).
 */
export type Attempt = ({ target: string; result: SendResult } | { target: string; error: SendError }) & {
  remoteMta: string | null;
  dsn: boolean;
  /** What the hop that answered showed of its TLS (null: no connection got that far). */
  tls?: TlsFacts | null;
};

/** Internals of nodemailer's SMTPConnection we rely on (checked at load, covered by tests). */
interface ConnectionInternals {
  _sendRcpt(recipient: string, callback: unknown): void;
  /** Reads a reply to EHLO (each time EHLO is sent: again after STARTTLS). */
  _actionEHLO(reply: string): void;
  /** The socket of the session: the TLS socket once STARTTLS is done. */
  _socket: unknown;
}
const internals = SMTPConnection.prototype as unknown as Partial<ConnectionInternals>;
if (typeof internals._sendRcpt !== 'function') {
  throw new Error('nodemailer SMTPConnection has no _sendRcpt: per-recipient NOTIFY/ORCPT cannot be passed on with this nodemailer version');
}
const sendRcpt = internals._sendRcpt;
if (typeof internals._actionEHLO !== 'function') {
  throw new Error('nodemailer SMTPConnection has no _actionEHLO: the EHLO reply (DSN support) cannot be read with this nodemailer version');
}
const actionEhlo = internals._actionEHLO;

/** The envelope object nodemailer keeps and fills in during a transaction (SMTPConnectionEnvelope). */
interface TrackedEnvelope {
  from: string;
  to: string[];
  size?: number;
  use8BitMime?: boolean;
  dsn: { ret?: string | null; envid?: string | null; notify?: string | null; orcpt?: string | null };
  accepted?: string[];
  rejectedErrors?: SendError[];
}

/**
 * nodemailer's SMTPConnection takes DSN parameters for the whole envelope; RFC 3461 has NOTIFY and
 * ORCPT per recipient, and a sender such as Postfix gives every recipient its own ORCPT. Setting
 * them per RCPT here keeps one transaction per message (rather than one per distinct parameter
 * set, which would send the message once per recipient). nodemailer still decides whether the
 * hop offers DSN and encodes the values as xtext.
 */
class RelayConnection extends SMTPConnection {
  envelopeInFlight: TrackedEnvelope | null = null;
  recipientParams = new Map<string, OutgoingRecipient>();
  /** The latest EHLO reply: after STARTTLS the one over TLS, which alone counts (RFC 3207 4.2). */
  ehloReply = '';

  _actionEHLO(reply: string): void {
    this.ehloReply = reply;
    actionEhlo.call(this, reply);
  }

  _sendRcpt(recipient: string, callback: unknown): void {
    const dsn = this.envelopeInFlight?.dsn;
    if (dsn) {
      const own = this.recipientParams.get(recipient);
      dsn.notify = own?.notify?.length ? own.notify.join(',') : null;
      dsn.orcpt = own?.orcpt ?? null;
    }
    sendRcpt.call(this, recipient, callback);
  }
}

interface Slot {
  connection: RelayConnection;
  /** The hop advertised DSN in its EHLO reply. */
  dsn: boolean;
  tls: TlsFacts;
  messages: number;
  alive: boolean;
  idleTimer: NodeJS.Timeout | null;
}

interface HopPool {
  idle: Slot[];
  active: number;
  waiters: (() => void)[];
}

/** Messages sent over one connection before it is closed and a new one opened. */
const MAX_MESSAGES = 1000;

/**
 * Relays stored messages unchanged to next hops over nodemailer's SMTPConnection, with its own
 * small pool (connections reused across messages, at most `maxConnections` per hop). Per
 * recipient, the RCPT reply is kept even when DATA then fails, so a recipient refused at RCPT
 * keeps its own verdict.
 */
export function createSmtpClient(options: ClientOptions) {
  const pools = new Map<string, HopPool>();
  const idleMs = options.idleMs ?? 5000;
  let closed = false;

  function poolOf(key: string): HopPool {
    let pool = pools.get(key);
    if (!pool) pools.set(key, (pool = { idle: [], active: 0, waiters: [] }));
    return pool;
  }

  /** A TLS failure under a requirement: a deferral (no reply code), and the next hop is tried. */
  function tlsFailure(refusal: string, facts: TlsFacts): SendError & { tls: TlsFacts } {
    return { message: refusal, command: 'CONN', tls: facts };
  }

  /** `hopName`: the hop in replies (`name[address]:port` or `host:port`). */
  function open(hop: Hop, tls: HopTls, hopName: string): Promise<Slot> {
    const name = hop.name ?? hop.host;
    const required = tlsRequired(tls.requirement);
    // The chain is checked against the anchors of what verifies: the requirement, else the audit.
    const verifying = tls.requirement.level === 'verify' ? tls.requirement : (tls.audit ?? tls.requirement);
    const ca = trustAnchors(verifying.trust, options.systemCa);
    const connection = new RelayConnection({
      host: hop.host,
      port: hop.port,
      secure: false,
      name: options.name,
      // STARTTLS whenever offered. Under `may` (Postfix's smtp_tls_security_level=may) a refused
      // STARTTLS goes on in plain text; under a requirement it ends the session, and a hop that
      // does not offer it is left before MAIL (checked below). Certificates are never rejected
      // during the handshake: the facts are judged after it, by rules/next-hop-tls.ts.
      opportunisticTLS: !required,
      tls: { rejectUnauthorized: false, ...chainOnly, ...(hop.name ? { servername: hop.name } : {}), ...(ca ? { ca } : {}) },
      connectionTimeout: options.connectionTimeoutMs ?? 30_000,
      greetingTimeout: 30_000,
      socketTimeout: 300_000,
      logger: false,
    });
    const slot: Slot = { connection, dsn: false, tls: NOT_OFFERED, messages: 0, alive: true, idleTimer: null };
    // Errors also reach the callback of what is in flight; this keeps late ones from throwing.
    connection.on('error', () => {
      slot.alive = false;
    });
    connection.on('end', () => {
      slot.alive = false;
    });
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (error: SendError & { code?: string; response?: string }) => {
        if (settled) return;
        settled = true;
        if (required && error.code === 'ETLS') {
          const facts = typeof error.response === 'string' && error.command === 'STARTTLS' ? unsecuredFacts({ refused: error.response }) : unsecuredFacts({ error: error.message.replace(/^Error initiating TLS - /, '') });
          return reject(tlsFailure(tlsRefusal(tls.requirement, facts, hopName) ?? error.message, facts));
        }
        reject(error);
      };
      connection.once('error', fail);
      connection.connect((error) => {
        if (error) return fail(error as SendError);
        if (settled) return;
        settled = true;
        const last = String(connection.lastServerResponse || '');
        const socket = (connection as unknown as ConnectionInternals)._socket as TLSSocket;
        slot.tls = connection.secure
          ? securedFacts(socket, name)
          : // In plain text: not offered, or (may) the STARTTLS command refused and the session went on.
            /^[45]\d\d/.test(last)
            ? unsecuredFacts({ refused: last })
            : { ...NOT_OFFERED, offered: false };
        const refusal = tlsRefusal(tls.requirement, slot.tls, hopName);
        if (refusal) {
          // Nothing but EHLO (and STARTTLS) went to this hop; QUIT, over TLS where there is TLS.
          slot.alive = false;
          connection.quit();
          return reject(tlsFailure(refusal, slot.tls));
        }
        // The extensions of the last EHLO reply (not `last`: under `may` a refused STARTTLS's reply
        // comes after it).
        slot.dsn = /^250[ -]DSN\b/im.test(connection.ehloReply);
        resolve(slot);
      });
    });
  }

  async function acquire(key: string, hop: Hop, tls: HopTls, hopName: string): Promise<{ slot: Slot; reused: boolean }> {
    const pool = poolOf(key);
    while (pool.active >= options.maxConnections) await new Promise<void>((resolve) => pool.waiters.push(resolve));
    pool.active += 1;
    for (let slot = pool.idle.pop(); slot; slot = pool.idle.pop()) {
      if (slot.idleTimer) clearTimeout(slot.idleTimer);
      if (slot.alive) return { slot, reused: true };
    }
    try {
      return { slot: await open(hop, tls, hopName), reused: false };
    } catch (error) {
      release(key, null);
      throw error;
    }
  }

  /** Return a slot to its pool (or drop it, when `slot` is null or not reusable). */
  function release(key: string, slot: Slot | null): void {
    const pool = poolOf(key);
    pool.active -= 1;
    if (slot) {
      if (slot.alive && !closed && slot.messages < MAX_MESSAGES) {
        slot.idleTimer = setTimeout(() => {
          pool.idle = pool.idle.filter((other) => other !== slot);
          slot.alive = false;
          slot.connection.quit();
        }, idleMs);
        slot.idleTimer.unref();
        pool.idle.push(slot);
      } else {
        // A live session gets QUIT; a broken one is just closed.
        if (slot.alive) slot.connection.quit();
        else slot.connection.close();
        slot.alive = false;
      }
    }
    pool.waiters.shift()?.();
  }

  /**
   * One transaction on an open connection; afterwards the session is clean (RSET) or dropped.
   * `untouched`: the hop answered nothing of it (a cached connection it had closed meanwhile).
   */
  function transact(slot: Slot, message: OutgoingMessage, body: Readable, signal?: AbortSignal): Promise<{ outcome: { result: SendResult } | { error: SendError }; untouched: boolean }> {
    const envelope: TrackedEnvelope = {
      from: message.from,
      to: message.recipients.map((recipient) => recipient.address),
      dsn: { ret: message.ret ?? null, envid: message.envid ?? null },
      ...(message.size ? { size: message.size } : {}),
      ...(message.body8bit ? { use8BitMime: true } : {}),
    };
    const { connection } = slot;
    connection.envelopeInFlight = envelope;
    connection.recipientParams = new Map(message.recipients.map((recipient) => [recipient.address, recipient]));
    slot.messages += 1;
    // Stopped (the deliverer lost its lease): the socket is destroyed, so what was not written yet, the final dot included, never goes.
    const stop = () => {
      slot.alive = false;
      ((connection as unknown as ConnectionInternals)._socket as TLSSocket | undefined)?.destroy(new Error(`stopped: ${String((signal?.reason as Error | undefined)?.message ?? signal?.reason)}`));
    };
    signal?.addEventListener('abort', stop, { once: true });
    return new Promise((resolve) => {
      connection.send(envelope as never, body, (error, info) => {
        signal?.removeEventListener('abort', stop);
        connection.envelopeInFlight = null;
        if (!error) return resolve({ outcome: { result: info as unknown as SendResult }, untouched: false });
        const failure = error as unknown as SendError & { code?: string };
        if (failure.code === 'EMESSAGE' && /size larger than allowed/i.test(failure.message)) {
          // The hop's EHLO SIZE is smaller than the message: it would refuse it (RFC 1870).
          failure.response = `552 5.3.4 Message too big for ${connection.host} (${failure.message})`;
          failure.responseCode = 552;
        }
        // nodemailer does not put the RCPT replies on an error after DATA; the envelope has them.
        if (!failure.rejectedErrors && envelope.rejectedErrors?.length) failure.rejectedErrors = envelope.rejectedErrors;
        const untouched = failure.responseCode === undefined && !envelope.accepted?.length && !envelope.rejectedErrors?.length;
        if (failure.responseCode === undefined || failure.command === 'CONN' || !slot.alive) {
          slot.alive = false;
          return resolve({ outcome: { error: failure }, untouched });
        }
        connection.reset((resetError) => {
          if (resetError) slot.alive = false;
          resolve({ outcome: { error: failure }, untouched });
        });
      });
    });
  }

  return {
    /**
     * Send one message to the first hop that answers (RFC 5321 5.1: the next one on connection
     * failure, a 4xx/5xx greeting, or TLS that does not meet `tls`: RFC 7672 and 8461 move on to
     * the next MX too). `body` is called again for each hop tried. `signal`: stop at once (the
     * transaction is cut off, before its final dot when that was not written yet); rejects.
     */
    async send(hops: readonly Hop[], message: OutgoingMessage, body: () => Promise<Readable>, tls: HopTls = { requirement: OPPORTUNISTIC }, signal?: AbortSignal): Promise<Attempt> {
      let last: Attempt | null = null;
      for (const hop of hops) {
        signal?.throwIfAborted();
        // Connections are reused only under the same TLS requirement (they were checked against it).
        const key = `${formatTarget(hop)} ${hop.name ?? ''} ${JSON.stringify(tls)}`;
        const target = hop.name ? `${hop.name}[${hop.host}]:${hop.port}` : formatTarget(hop);
        const remoteMta = hop.name ?? hop.host;
        for (let tries = 0; ; tries += 1) {
          let acquired: { slot: Slot; reused: boolean };
          try {
            acquired = await acquire(key, hop, tls, target);
          } catch (error) {
            // Connection refused or lost, timeout, 4xx/5xx greeting, EHLO refused, TLS refused: the next hop.
            const failure = error as SendError & { tls?: TlsFacts };
            last = { target, error: failure, remoteMta, dsn: false, tls: failure.tls ?? null };
            break;
          }
          const { slot, reused } = acquired;
          let sent: Awaited<ReturnType<typeof transact>>;
          try {
            const stream = await body();
            signal?.throwIfAborted();
            sent = await transact(slot, message, stream, signal);
          } catch (error) {
            slot.alive = false;
            release(key, slot);
            throw error;
          }
          release(key, slot);
          // A cached connection the hop had closed meanwhile: once more, on a new connection.
          if (reused && sent.untouched && tries === 0) continue;
          return { target, ...sent.outcome, remoteMta, dsn: slot.dsn, tls: slot.tls };
        }
      }
      return last ?? { target: '', error: { message: 'no next hop' }, remoteMta: null, dsn: false };
    },
    close(): void {
      closed = true;
      for (const pool of pools.values()) {
        for (const slot of pool.idle) {
          if (slot.idleTimer) clearTimeout(slot.idleTimer);
          slot.connection.quit();
        }
        pool.idle = [];
      }
    },
  };
}
