/**
 * Prometheus metrics (prom-client), served by every service on GET /metrics (see http.ts). Each
 * service updates the ones about what it does; gauges about the spool are read from the store
 * when Prometheus scrapes (beforeScrape), not kept up to date on every write.
 */
import client from 'prom-client';
import type { QueueStats } from '../store/store.ts';

export const registry = client.register;
client.collectDefaultMetrics({ register: registry });

// ingress
export const smtpConnections = new client.Counter({ name: 'backupmx_smtp_connections_total', help: 'SMTP connections opened by senders.' });
export const smtpConnectionsActive = new client.Gauge({ name: 'backupmx_smtp_connections_active', help: 'SMTP connections open now.' });
export const messagesAccepted = new client.Counter({ name: 'backupmx_messages_accepted_total', help: 'Messages answered with 250 after DATA.' });
export const smtpRejections = new client.Counter({
  name: 'backupmx_smtp_rejections_total',
  help: 'Replies refusing a command, by stage (connect, mail, rcpt, data), reply code and enhanced status code (the reason).',
  labelNames: ['stage', 'code', 'status'] as const,
});
export const proxyHeaders = new client.Counter({
  name: 'backupmx_proxy_headers_total',
  help: "PROXY protocol headers read from trusted balancers (PROXY_FROM), by version (1, 2) and command (proxy; local and unknown: the balancer's own connection).",
  labelNames: ['version', 'command'] as const,
});
export const proxyRefusals = new client.Counter({
  name: 'backupmx_proxy_refused_total',
  help: 'Connections from trusted balancers closed without a greeting for want of a valid PROXY header, by reason (invalid, timeout, truncated, empty).',
  labelNames: ['reason'] as const,
});

// spool
export const messagesDeadLettered = new client.Counter({ name: 'backupmx_messages_dead_lettered_total', help: 'Messages the spool could not read and sent to the dead-letter queue.' });
export const spoolDeliveries = new client.Gauge({ name: 'backupmx_spool_deliveries', help: 'Deliveries (one per recipient) in the store, by state.', labelNames: ['state'] as const });
export const spoolQueued = new client.Gauge({ name: 'backupmx_spool_queued', help: 'Queued deliveries by route (the primary they wait for).', labelNames: ['route'] as const });
export const spoolMessages = new client.Gauge({ name: 'backupmx_spool_messages', help: 'Messages with at least one queued or held delivery.' });
export const spoolOldestAge = new client.Gauge({ name: 'backupmx_spool_oldest_queued_age_seconds', help: 'Age of the oldest message with a queued delivery (0 when none).' });

// deliverer
export const deliveryAttempts = new client.Counter({
  name: 'backupmx_delivery_attempts_total',
  help: 'Delivery attempts per recipient, by route and outcome (delivered, deferred, failed).',
  labelNames: ['route', 'outcome'] as const,
});

// health
export const primaryUp = new client.Gauge({ name: 'backupmx_primary_up', help: 'Primary target state: 1 up, 0 down (absent while unknown).', labelNames: ['target'] as const });
export const primaryTransitions = new client.Counter({ name: 'backupmx_primary_transitions_total', help: 'Primary targets going up or down.', labelNames: ['target', 'state'] as const });
export const probeDuration = new client.Histogram({
  name: 'backupmx_probe_duration_seconds',
  help: 'SMTP probe time (connect, greeting, EHLO, QUIT) by target and result.',
  labelNames: ['target', 'result'] as const,
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
});

export const primaryTlsOffered = new client.Gauge({ name: 'backupmx_primary_tls_offered', help: 'The primary target offers STARTTLS: 1 yes, 0 no (absent until a probe reached EHLO).', labelNames: ['target'] as const });
export const primaryTlsVerified = new client.Gauge({
  name: 'backupmx_primary_tls_verified',
  help: 'The primary target completes STARTTLS with a certificate that chains to its trust anchors (PRIMARY_TLS_CA or the system CAs) and names it: 1 yes, 0 no.',
  labelNames: ['target'] as const,
});
export const primaryTlsExpiry = new client.Gauge({
  name: 'backupmx_primary_tls_cert_expiry_timestamp_seconds',
  help: 'When the primary target\'s certificate expires (Unix time); absent without a TLS session.',
  labelNames: ['target'] as const,
});

// every service
export const brokerReconnects = new client.Counter({ name: 'backupmx_broker_reconnects_total', help: 'Connections to RabbitMQ re-established after a loss.' });
export const storeReconnects = new client.Counter({ name: 'backupmx_store_reconnects_total', help: 'Connections to the store re-established after a loss.' });
export const readiness = new client.Gauge({ name: 'backupmx_ready', help: 'What /readyz checks: 1 connected, 0 not.', labelNames: ['check'] as const });
export const diskFree = new client.Gauge({ name: 'backupmx_disk_free_bytes', help: 'Free space (for this user) on the file system of DATA_DIR.' });
export const diskLow = new client.Gauge({
  name: 'backupmx_disk_headroom_low',
  help: 'Free space in DATA_DIR is below DISK_HEADROOM: new mail is refused (452 4.3.1) while the queue drains. 1 yes, 0 no.',
});
export const memoryHeld = new client.Gauge({ name: 'backupmx_smtp_message_bytes_held', help: 'Message bytes SMTP sessions hold in memory now (limit: MEMORY_BUDGET).' });
export const alertNotifications = new client.Counter({ name: 'backupmx_alert_notifications_total', help: 'Alert webhook notifications, by result (sent, failed after retries).', labelNames: ['result'] as const });

const hooks = new Set<() => unknown>();

/** Run `hook` (e.g. read the store's statistics) before each scrape. Returns a function removing it. */
export function beforeScrape(hook: () => unknown): () => void {
  hooks.add(hook);
  return () => hooks.delete(hook);
}

/** The text exposition, after every beforeScrape hook has run (a failing hook leaves stale values). */
export async function scrape(): Promise<string> {
  await Promise.allSettled([...hooks].map(async (hook) => hook()));
  return registry.metrics();
}

/** Set the spool gauges from the store's statistics. */
export function observeSpool(stats: QueueStats, now: number): void {
  spoolQueued.reset();
  let queued = 0;
  for (const [route, count] of Object.entries(stats.queued)) {
    spoolQueued.set({ route }, count);
    queued += count;
  }
  spoolDeliveries.set({ state: 'queued' }, queued);
  spoolDeliveries.set({ state: 'held' }, stats.held);
  spoolDeliveries.set({ state: 'delivered' }, stats.delivered);
  spoolDeliveries.set({ state: 'failed' }, stats.failed);
  spoolMessages.set(stats.messages);
  spoolOldestAge.set(stats.oldestQueuedAt === null ? 0 : Math.max(0, (now - stats.oldestQueuedAt) / 1000));
}

/**
 * Follow a service's readiness checks (each second): keeps backupmx_ready current and counts a store
 * reconnect whenever the `store` check comes back after having been lost, whatever the adapter.
 * (RabbitMQ reconnects are counted by the broker itself.) Returns a function that stops it.
 */
export function followReadiness(checks: () => Record<string, boolean>, everyMs = 1000): () => void {
  const last = new Map<string, boolean>();
  const poll = () => {
    for (const [check, ok] of Object.entries(checks())) {
      if (check === 'store' && ok && last.get(check) === false) storeReconnects.inc();
      // A check only counts as lost once it has been up.
      if (ok || last.has(check)) last.set(check, ok);
      readiness.set({ check }, ok ? 1 : 0);
    }
  };
  const timer = setInterval(poll, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
