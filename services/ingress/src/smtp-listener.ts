import './smtp-server-patches.ts';
import './proxy-protocol.ts';
import type { ProxyProtocolOptions } from './proxy-protocol.ts';
import { Buffer } from 'node:buffer';
import { Readable } from 'node:stream';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { SMTPServer, type SMTPServerDataStream, type SMTPServerSession } from 'smtp-server';
import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { countReceived } from '@backupmx/shared/mail/message.ts';
import { newQueueId } from '@backupmx/shared/rules/queue-id.ts';
import { configuredRoutes } from '@backupmx/shared/rules/routing.ts';
import { replyError, type SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';
import { checkMailParams, checkRcptParams, dsnParams, type DsnSession } from '@backupmx/shared/rules/dsn-params.ts';
import type { ClientLimits } from './client-limits.ts';
import type { Resolver } from './dns.ts';
import { dnsblReply, findListing } from './dnsbl.ts';
import type { DiskHeadroom } from '@backupmx/shared/runtime/disk-headroom.ts';
import type { MemoryBudget } from './memory-budget.ts';
import { bodyReleased } from '@backupmx/shared/runtime/young-gc.ts';
import { declaredSize, leadingBytes, readMessage } from './message-reader.ts';
import type { PrimaryState } from './primary-state.ts';
import { receivedHeader } from './received-header.ts';
import type { RecipientValidation } from './recipient-validation.ts';
import { asciiAddress, checkRecipient } from '../../../shared/src/rules/relay-policy.ts';
import { dmarcRefusal, evaluateSender, needsBody } from './sender-auth.ts';
import type { SpfCache } from './spf-cache.ts';
import { MIN_TLS_VERSION, type TlsFiles } from './tls-files.ts';

/** Received headers above which a message is taken to be looping (Postfix hopcount_limit). */
export const HOP_LIMIT = 50;

const tracer = trace.getTracer('backupmx-ingress');

export interface ListenerDeps {
  primaryState: PrimaryState;
  recipients: RecipientValidation;
  limits: ClientLimits;
  /** DNS for sender authentication and DNSBLs, each lookup already limited to DNS_TIMEOUT. */
  resolver: Resolver;
  /** SPF verdicts reused for a few seconds, over `resolver` (which caches DNS answers); null: none. */
  spfCache: SpfCache | null;
  /** STARTTLS certificate and key; null: no STARTTLS. */
  tls: TlsFiles | null;
  /** PROXY protocol from the balancers in PROXY_FROM; null: none trusted. */
  proxy: ProxyProtocolOptions | null;
  /** MEMORY_BUDGET: message bytes all sessions may hold at once. */
  budget: MemoryBudget;
  /** DISK_HEADROOM of the store's DATA_DIR, where this process writes it; null: not ours to watch. */
  disk: DiskHeadroom | null;
}

/** Postfix's answer when it is short of room (queue_minfree, a SIZE that does not fit): the sender retries later. */
export const INSUFFICIENT_STORAGE: SmtpReply = { code: 452, status: '4.3.1', text: 'Insufficient system storage' };

/** What we keep per SMTP session (smtp-server keeps one session object per connection). */
interface SessionState {
  /** The address the connection was counted under, until it is released. */
  counted: string | null;
  /** Which DNSBL zone lists the client, looked up from the connect on. */
  dnsbl: Promise<string | null> | null;
  /** The current transaction (since the last MAIL) has been counted as a message. */
  messageCounted: boolean;
}

/**
 * The SMTP listener: a backup MX for RELAY_DOMAINS only, with the inbound protection a Postfix
 * backup MX has (recipient validation, connection and rate limits, DNSBLs, STARTTLS, sender
 * authentication). Answers 250 to DATA only after the broker has confirmed the message; anything
 * else is a 4xx so the sender keeps the message.
 */
export function createSmtpListener(config: Config, broker: Broker, log: Logger, deps: ListenerDeps): SMTPServer {
  const relayDomains = new Set(config.RELAY_DOMAINS);
  const routes = configuredRoutes(config);
  const sessions = new WeakMap<SMTPServerSession, SessionState>();
  const refuse = (callback: (error?: Error | null) => void, reply: SmtpReply, fields: Record<string, unknown>, message: string) => {
    log.info({ ...fields, reply: `${reply.code} ${reply.status}` }, message);
    callback(replyError(reply));
  };

  const server: SMTPServer = new SMTPServer({
    name: config.SMTP_HOSTNAME,
    banner: 'backupmx',
    size: config.MAX_MESSAGE_SIZE,
    disabledCommands: deps.tls ? ['AUTH'] : ['AUTH', 'STARTTLS'],
    ...(deps.tls ? { key: deps.tls.key, cert: deps.tls.cert, minVersion: MIN_TLS_VERSION } : {}),
    hideSTARTTLS: !deps.tls,
    hideENHANCEDSTATUSCODES: false,
    hidePIPELINING: false,
    hide8BITMIME: false,
    hideSMTPUTF8: false,
    // RFC 3461 (issue 4): RET, ENVID, NOTIFY, ORCPT are kept in the Envelope and passed on.
    hideDSN: false,
    disableReverseLookup: true,
    // RFC 5321 4.5.3.2.7: a server waits at least 5 minutes for the next command.
    socketTimeout: config.COMMAND_TIMEOUT,
    maxCommandLength: config.MAX_COMMAND_LENGTH,
    closeTimeout: 20_000,
    logger: false,
    // Read by smtp-server-patches.ts (and proxyProtocol by proxy-protocol.ts).
    ...({ greetingDelay: config.GREETING_DELAY, dataTimeout: config.DATA_TIMEOUT, maxErrors: config.MAX_ERRORS, closeAfterQuit: true, ...(deps.proxy ? { proxyProtocol: deps.proxy } : {}) } as object),

    onConnect(session, callback) {
      const client = session.remoteAddress;
      if (!config.ACCEPT_WHEN_PRIMARY_UP && deps.primaryState.allUp(routes, Date.now())) {
        const reply = { code: 421, status: '4.3.2', text: `${config.SMTP_HOSTNAME} Service not available: the primary mail server is up, please use it` };
        return refuse(callback, reply, { client }, 'connection refused: standby while the primary is up');
      }
      const limited = deps.limits.open(client);
      if (limited) return refuse(callback, limited, { client }, 'connection refused: limit');
      const dnsbl = config.DNSBL_ZONES.length ? findListing(client, config.DNSBL_ZONES, deps.resolver) : null;
      sessions.set(session, { counted: client, dnsbl, messageCounted: false });
      log.info({ client, session: session.id }, 'connect'); // the address we saw: through docker-proxy, the bridge gateway's
      callback();
    },

    onClose(session) {
      const state = sessions.get(session);
      if (state?.counted) {
        deps.limits.close(state.counted);
        state.counted = null;
      }
    },

    onMailFrom(address, session, callback) {
      address.address = asciiAddress(address.address);
      const state = sessions.get(session);
      if (state) state.messageCounted = false;
      // DSN parameter limits smtp-server does not check (issue 4): 501 5.5.4.
      const badDsn = checkMailParams(address);
      if (badDsn) {
        // smtp-server applied BODY, SMTPUTF8, RET and ENVID to the session before asking us; a
        // refused MAIL FROM must not lend them to the next one.
        Object.assign(session.envelope, { bodyType: '7bit', smtpUtf8: false, requireTLS: false }, session.envelope.dsn ? { dsn: { ret: null, envid: null } } : {});
        return callback(replyError(badDsn));
      }
      const declared = address.args ? Number(address.args.SIZE ?? 0) || 0 : 0;
      const space = deps.disk?.check();
      if (space?.low) return refuse(callback, INSUFFICIENT_STORAGE, { client: session.remoteAddress, free: space.free, headroom: deps.disk?.threshold }, 'sender refused: disk space below DISK_HEADROOM');
      if (declared > deps.budget.limit - deps.budget.held()) return refuse(callback, INSUFFICIENT_STORAGE, { client: session.remoteAddress, size: declared, held: deps.budget.held() }, 'sender refused: declared SIZE exceeds the free MEMORY_BUDGET');
      callback();
    },

    onRcptTo(address, session, callback) {
      address.address = asciiAddress(address.address);
      const badDsn = checkRcptParams(address); // issue 4: 501 5.5.4
      if (badDsn) return callback(replyError(badDsn));
      checkRcpt(address.address, session).then(
        (refusal) => {
          if (!refusal) return callback();
          const fields = { client: session.remoteAddress, from: session.envelope.mailFrom ? session.envelope.mailFrom.address : null, to: address.address };
          refuse(callback, refusal, fields, 'recipient refused');
        },
        (error: unknown) => {
          log.error({ err: error, to: address.address }, 'recipient check failed');
          callback(replyError({ code: 451, status: '4.3.0', text: `<${address.address}>: Temporary lookup failure` }));
        },
      );
    },

    onData(stream, session, callback) {
      handleData(stream, session).then(
        (id) => callback(null, `2.0.0 Ok: queued as ${id}`),
        (error: Error) => callback(error),
      );
    },
  });

  /** The rules for one recipient, in Postfix's order; null to accept it. */
  async function checkRcpt(address: string, session: SMTPServerSession): Promise<SmtpReply | null> {
    if (session.envelope.rcptTo.length >= config.MAX_RECIPIENTS) {
      return { code: 452, status: '4.5.3', text: 'Error: too many recipients' };
    }
    // Like Postfix's anvil limits, every RCPT counts, accepted or not (that also slows down
    // address harvesting); a message counts at its transaction's first RCPT.
    const state = sessions.get(session);
    const limited = deps.limits.recipient(session.remoteAddress, state !== undefined && !state.messageCounted, Date.now());
    if (limited) return limited;
    if (state) state.messageCounted = true;
    const relay = checkRecipient(address, relayDomains);
    if (relay) return relay;
    const listed = await state?.dnsbl;
    if (listed) return dnsblReply(session.remoteAddress, listed);
    return deps.recipients.check(address);
  }

  async function handleData(stream: SMTPServerDataStream, session: SMTPServerSession): Promise<string> {
    const id = newQueueId();
    const read = await readMessage(stream, config.MAX_MESSAGE_SIZE, config.MAX_HEADER_SIZE, deps.budget, declaredSize(session.envelope));
    try {
      return await storeMessage(id, read, session);
    } finally {
      deps.budget.release(read.reserved);
      bodyReleased(read.reserved); // a large one: freed now, not when V8's heap next fills
    }
  }

  async function storeMessage(id: string, read: Awaited<ReturnType<typeof readMessage>>, session: SMTPServerSession): Promise<string> {
    const recipients = session.envelope.rcptTo.map((rcpt) => rcpt.address);
    const mailFrom = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
    const fields = { queueId: id, client: session.remoteAddress, from: mailFrom, recipients: recipients.length };
    if (read.refused === 'size') {
      log.info({ ...fields }, 'message refused: too large');
      throw replyError({ code: 552, status: '5.3.4', text: `Message size exceeds fixed limit of ${config.MAX_MESSAGE_SIZE} bytes` });
    }
    if (read.refused === 'memory') {
      log.warn({ ...fields, held: deps.budget.held(), budget: deps.budget.limit }, 'message refused: MEMORY_BUDGET exhausted');
      throw replyError(INSUFFICIENT_STORAGE);
    }
    const message = read.message;
    if (message === null) {
      log.info({ ...fields }, 'message refused: header too large');
      throw replyError({ code: 552, status: '5.3.4', text: `Message header size exceeds limit of ${config.MAX_HEADER_SIZE} bytes` });
    }
    const headerSection = leadingBytes(message.chunks, message.headerSize);
    const hops = countReceived(headerSection);
    if (hops > HOP_LIMIT) {
      log.warn({ ...fields, hops }, 'message refused: mail loop');
      throw replyError({ code: 554, status: '5.4.6', text: `Too many hops (${hops} Received headers): mail loop?` });
    }
    const helo = session.hostNameAppearsAs || 'unknown';
    let authResults = '';
    if (config.SENDER_AUTH) {
      const auth = await evaluateSender({
        message: needsBody(headerSection) ? Readable.from(message.chunks, { objectMode: false }) : headerSection,
        clientAddress: session.remoteAddress,
        helo,
        mailFrom,
        hostname: config.SMTP_HOSTNAME,
        resolver: deps.resolver,
        spfCache: deps.spfCache,
        timeoutMs: 3 * config.DNS_TIMEOUT,
      });
      if (auth.timedOut) log.warn({ ...fields }, 'sender authentication timed out');
      const refusal = config.DMARC_REJECT ? dmarcRefusal(auth.dmarc) : null;
      if (refusal) {
        log.info({ ...fields, dmarc: auth.dmarc }, 'message refused: DMARC');
        throw replyError(refusal);
      }
      authResults = auth.header;
    }
    const tlsSession = session.secure ? (session as { tlsOptions?: { name?: string; version?: string } | false }).tlsOptions : null;
    const header = receivedHeader({
      helo,
      clientAddress: session.remoteAddress,
      by: config.SMTP_HOSTNAME,
      protocol: session.transmissionType || 'ESMTP',
      id,
      recipients,
      date: new Date(),
      tls: tlsSession ? { version: tlsSession.version ?? 'TLS', cipher: tlsSession.name ?? 'unknown' } : null,
    });
    const space = deps.disk?.check();
    if (space?.low) {
      log.warn({ ...fields, free: space.free, headroom: deps.disk?.threshold }, 'message refused: disk space below DISK_HEADROOM');
      throw replyError(INSUFFICIENT_STORAGE);
    }
    // The one copy of the message: our fields on top, the sender's bytes as they came.
    const ours = Buffer.from(header + authResults, 'latin1');
    const raw = message.join(ours);
    const envelope = {
      mailFrom,
      rcptTo: recipients,
      clientHelo: helo,
      clientAddress: session.remoteAddress,
      ...(session.envelope.smtpUtf8 ? { smtputf8: true } : {}),
      ...(session.envelope.bodyType === '8bitmime' ? { body8bit: true } : {}),
      ...dsnParams(session as unknown as DsnSession), // issue 4: RET, ENVID, NOTIFY, ORCPT
    };
    return tracer.startActiveSpan('smtp.data', { attributes: { 'backupmx.queue_id': id, 'backupmx.recipients': recipients.length, 'messaging.message.body.size': raw.length, 'client.address': session.remoteAddress } }, async (span) => {
      const carrier: Record<string, string> = {};
      propagation.inject(context.active(), carrier);
      const size = raw.length; // taken first: in one process the store's thread may take the body itself
      const written = deps.disk?.admit(size);
      try {
        await broker.publishMail({ id, envelope, body: raw, receivedAt: Date.now(), trace: carrier });
        log.info({ ...fields, size, tls: Boolean(tlsSession) }, 'message accepted');
        return id;
      } catch (error) {
        span.recordException(error as Error);
        span.setStatus({ code: SpanStatusCode.ERROR, message: (error as Error).message });
        log.warn({ ...fields, err: error }, 'message not accepted: broker did not confirm');
        throw replyError({ code: 451, status: '4.3.0', text: 'Temporary failure: message not queued, try again later' });
      } finally {
        written?.();
        span.end();
      }
    });
  }

  // smtp-server reports a client's broken connection (reset mid-transaction, failed TLS handshake)
  // as a server error carrying the client's address: routine on the internet, not ours to alarm about.
  server.on('error', (error: Error & { remoteAddress?: string }) => {
    if (error.remoteAddress) log.debug({ err: error, client: error.remoteAddress }, 'smtp connection error');
    else log.error({ err: error }, 'smtp server error');
  });
  return server;
}
