import type { Broker, PrimaryEvent } from '@backupmx/shared/broker/broker.ts';
import { listenError, memoryBudget, type Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { proxyHeaders, proxyRefusals } from '@backupmx/shared/runtime/metrics.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import { callout } from './callout.ts';
import { createClientLimits } from './client-limits.ts';
import { cachingResolver, systemResolver, withTimeout, type Resolver } from './dns.ts';
import type { DiskHeadroom } from '@backupmx/shared/runtime/disk-headroom.ts';
import { createMemoryBudget } from './memory-budget.ts';
import { createPrimaryState } from './primary-state.ts';
import { trustedPeers, type ProxyProtocolOptions } from './proxy-protocol.ts';
import { createRecipientValidation, usesVerify } from './recipient-validation.ts';
import { createVerifier } from './recipient-verifier.ts';
import { createSmtpListener } from './smtp-listener.ts';
import { createSpfCache } from './spf-cache.ts';
import { observeSmtp } from './smtp-metrics.ts';
import { MIN_TLS_VERSION, readTlsFiles, watchTlsFiles } from './tls-files.ts';

export interface Ingress {
  listening(): boolean;
  /** SMTP sessions open now. */
  connections(): number;
  /** Sessions counted against the connection limits now, and the distinct clients they come from. */
  counted(): { connections: number; clients: number };
  /** Message bytes the sessions hold in memory now (counted against MEMORY_BUDGET). */
  messageBytesHeld(): number;
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
  /** Free space where the store writes (DATA_DIR), when this process holds the store: below DISK_HEADROOM new mail gets 452 4.3.1. */
  disk?: DiskHeadroom | null;
}

/** PROXY_FROM: trusted balancers, with every header and every refusal counted and refusals logged. */
function balancers(config: Config, log: Logger): ProxyProtocolOptions {
  return {
    trusted: trustedPeers(config.PROXY_FROM),
    timeoutMs: config.PROXY_TIMEOUT,
    accepted(balancer, header) {
      proxyHeaders.inc({ version: String(header.version), command: header.command });
      log.debug({ balancer, client: header.source?.address ?? balancer, version: header.version, command: header.command }, 'PROXY header');
    },
    refused(balancer, reason, text) {
      proxyRefusals.inc({ reason });
      const detail = text.startsWith('not a PROXY') ? `${text}: PROXY_FROM trusts ${balancer}, so it must send one (HAProxy: send-proxy or send-proxy-v2)` : text;
      // A connection closed before its first byte is what a balancer's plain TCP health check does.
      if (reason === 'empty') log.debug({ balancer, reason, detail }, 'connection from balancer closed: no PROXY header');
      else log.warn({ balancer, reason, detail }, 'connection refused: no valid PROXY header');
    },
  };
}

/** How long DNS answers of the system resolver are reused (sender authentication, DNSBLs). */
const DNS_CACHE_MS = 60_000;

/** How long an SPF verdict is reused for the same client address, HELO name and sender (spf-cache.ts). */
const SPF_CACHE_MS = 5_000;

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
  const budget = createMemoryBudget(memoryBudget(config));
  const server = createSmtpListener(config, broker, log, {
    primaryState,
    recipients: createRecipientValidation(config, verifier, log),
    limits,
    // The time limit on the lookups themselves: an answer from the cache needs no timer.
    resolver: options.resolver
      ? withTimeout(options.resolver, config.DNS_TIMEOUT)
      : cachingResolver(withTimeout(systemResolver(config.DNS_TIMEOUT), config.DNS_TIMEOUT), { ttlMs: DNS_CACHE_MS, maxEntries: 10_000 }),
    // Over the system resolver only, whose answers are cached longer anyway: an injected resolver
    // (tests) answers each message afresh.
    spfCache: options.resolver ? null : createSpfCache({ ttlMs: SPF_CACHE_MS, maxEntries: 10_000 }),
    tls,
    proxy: config.PROXY_FROM.length ? balancers(config, log) : null,
    budget,
    disk: options.disk ?? null,
  });
  observeSmtp(server); // metrics: connections, accepted, refusals by reply
  const watcher =
    config.TLS_CERT && config.TLS_KEY
      ? watchTlsFiles(config.TLS_CERT, config.TLS_KEY, log, (files) => server.updateSecureContext({ ...files, minVersion: MIN_TLS_VERSION }), options.tlsWatchIntervalMs)
      : null;
  const listen = (host: string) =>
    new Promise<void>((resolve, reject) => {
      const failed = (error: NodeJS.ErrnoException) => {
        server.server.off('listening', listening);
        reject(error);
      };
      const listening = () => {
        server.server.off('error', failed);
        resolve();
      };
      server.server.once('error', failed);
      // ipv6Only false: dual-stack on `::` whatever the host's net.ipv6.bindv6only says.
      server.server.listen({ port: config.SMTP_PORT, host, ipv6Only: false }, listening);
    });
  try {
    await listen(config.SMTP_HOST);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    // `::` on a host (or container) without IPv6: listen on IPv4, as before, and say so.
    if (config.SMTP_HOST !== '::' || (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL')) throw listenError('SMTP_PORT', config.SMTP_HOST, config.SMTP_PORT, error as NodeJS.ErrnoException);
    log.warn({ err: error }, 'no IPv6 on this host: SMTP listens on IPv4 only');
    await listen('0.0.0.0').catch((fallback: NodeJS.ErrnoException) => {
      throw listenError('SMTP_PORT', '0.0.0.0', config.SMTP_PORT, fallback);
    });
  }
  log.info({ address: server.server.address(), starttls: Boolean(tls), proxyFrom: config.PROXY_FROM.length > 0 }, 'smtp listening');
  return {
    listening: () => server.server.listening,
    connections: () => server.connections.size,
    counted: () => limits.counts(),
    messageBytesHeld: () => budget.held(),
    stop: () => {
      watcher?.stop();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
