import type { Broker, PrimaryEvent } from '@backupmx/shared/broker/broker.ts';
import { listenError, type Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import { callout } from './callout.ts';
import { createClientLimits } from './client-limits.ts';
import { cachingResolver, systemResolver, withTimeout, type Resolver } from './dns.ts';
import { createPrimaryState } from './primary-state.ts';
import { createRecipientValidation, usesVerify } from './recipient-validation.ts';
import { createVerifier } from './recipient-verifier.ts';
import { createSmtpListener } from './smtp-listener.ts';
import { observeSmtp } from './smtp-metrics.ts';
import { MIN_TLS_VERSION, readTlsFiles, watchTlsFiles } from './tls-files.ts';

export interface Ingress {
  listening(): boolean;
  /** SMTP sessions open now. */
  connections(): number;
  /** Sessions counted against the connection limits now, and the distinct clients they come from. */
  counted(): { connections: number; clients: number };
  /** Stop accepting connections; let sessions in flight finish (up to smtp-server's closeTimeout). */
  stop(): Promise<void>;
}

export interface IngressOptions {
  /** The store, for the recipient verification cache; required when a domain has VERIFY_RECIPIENTS. */
  store?: Store | null;
  /** DNS for sender authentication and DNSBLs (tests inject one); default: the system resolver. */
  resolver?: Resolver;
  /** How often the TLS files are checked for changes. */
  tlsWatchIntervalMs?: number;
}

/** How long DNS answers of the system resolver are reused (sender authentication, DNSBLs). */
const DNS_CACHE_MS = 60_000;

/** After a callout found the primary unreachable, answer from the policy for this long. */
const CALLOUT_BACKOFF_MS = 60_000;

export async function startIngress(config: Config, broker: Broker, log: Logger, options: IngressOptions = {}): Promise<Ingress> {
  if (usesVerify(config) && !options.store) throw new Error('VERIFY_RECIPIENTS needs the store (for its cache)');
  // Health events are hints with a period of PROBE_INTERVAL; three missed ones make the state unknown.
  const primaryState = createPrimaryState(3 * config.PROBE_INTERVAL + config.PROBE_TIMEOUT);
  await broker.subscribe(['primary.up', 'primary.down', 'primary.status'], (_key, payload) => primaryState.update(payload as PrimaryEvent, Date.now()));

  const verifier = options.store
    ? createVerifier({
        store: options.store,
        callout: (targets, address) => callout(targets, address, { heloName: config.SMTP_HOSTNAME, timeoutMs: config.VERIFY_TIMEOUT }),
        routeState: (route) => primaryState.route(route, Date.now()),
        now: Date.now,
        log,
        positiveTtlMs: config.VERIFY_POSITIVE_TTL,
        negativeTtlMs: config.VERIFY_NEGATIVE_TTL,
        backoffMs: CALLOUT_BACKOFF_MS,
      })
    : null;
  const tls = config.TLS_CERT && config.TLS_KEY ? readTlsFiles(config.TLS_CERT, config.TLS_KEY) : null;
  const limits = createClientLimits({
    hostname: config.SMTP_HOSTNAME,
    maxConnections: config.MAX_CONNECTIONS,
    maxConnectionsPerClient: config.MAX_CONNECTIONS_PER_IP,
    messagesPerMinute: config.MESSAGES_PER_IP_PER_MINUTE,
    recipientsPerMinute: config.RECIPIENTS_PER_IP_PER_MINUTE,
  });
  const server = createSmtpListener(config, broker, log, {
    primaryState,
    recipients: createRecipientValidation(config, verifier, log),
    limits,
    resolver: withTimeout(options.resolver ?? cachingResolver(systemResolver(config.DNS_TIMEOUT), { ttlMs: DNS_CACHE_MS, maxEntries: 10_000 }), config.DNS_TIMEOUT),
    tls,
  });
  observeSmtp(server); // metrics: connections, accepted, refusals by reply
  const watcher =
    config.TLS_CERT && config.TLS_KEY
      ? watchTlsFiles(config.TLS_CERT, config.TLS_KEY, log, (files) => server.updateSecureContext({ ...files, minVersion: MIN_TLS_VERSION }), options.tlsWatchIntervalMs)
      : null;
  await new Promise<void>((resolve, reject) => {
    const failed = (error: NodeJS.ErrnoException) => reject(listenError('SMTP_PORT', config.SMTP_HOST, config.SMTP_PORT, error));
    server.server.once('error', failed);
    server.listen(config.SMTP_PORT, config.SMTP_HOST, () => {
      server.server.off('error', failed);
      log.info({ address: server.server.address(), starttls: Boolean(tls) }, 'smtp listening');
      resolve();
    });
  });
  return {
    listening: () => server.server.listening,
    connections: () => server.connections.size,
    counted: () => limits.counts(),
    stop: () => {
      watcher?.stop();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
