/**
 * The spool's periodic sweep (every SWEEP_INTERVAL), independent of any deliverer or primary:
 * - expiry: deliveries of messages older than QUEUE_LIFETIME are leased (so no deliverer sends them
 *   meanwhile), one failure report per message is queued, then they are recorded failed `4.4.7`;
 * - delay notices (DELAY_WARNING): one "delayed" report per message that has waited that long;
 * - retention: delivered and failed records older than RECORD_RETENTION are purged.
 * Several spool instances may sweep at once: leases and the store's atomic delay marking keep each
 * report single.
 */
import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import { isSmtpReply, statusOf } from '@backupmx/shared/rules/dsn-policy.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { createReporter, type ReportEntry } from '@backupmx/shared/mail/reports.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import type { ClaimedMessage, Delivery, Outcome } from '@backupmx/shared/types.ts';

/** Messages handled per store call. */
const BATCH = 50;

/** The host of a recorded next hop (`host:port`, `[v6]:port`, `name[address]:port`). */
export function hostOfHop(hop: string | null): string | null {
  if (!hop) return null;
  const named = /^([^[\]]+)\[[^\]]*\]:\d+$/.exec(hop);
  if (named) return named[1] ?? null;
  const literal = /^\[([^\]]+)\]:\d+$/.exec(hop);
  if (literal) return literal[1] ?? null;
  return hop.replace(/:\d+$/, '');
}

/** `5d`, `4h`, `90s`: the largest unit that divides the duration. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** What an expired delivery is recorded with. */
export function expiryReply(lifetime: number, lastReply: string | null): string {
  const last = lastReply ? `; last reply: ${lastReply}` : '';
  return `4.4.7 Message expired: not delivered after ${formatDuration(lifetime)} in the queue${last}`;
}

function expiryEntry(delivery: Delivery): ReportEntry {
  return {
    recipient: delivery.recipient,
    action: 'failed',
    status: '4.4.7',
    remoteMta: isSmtpReply(delivery.lastReply) ? hostOfHop(delivery.lastNextHop) : null,
    reply: delivery.lastReply ?? 'no delivery attempt succeeded in the queue lifetime',
    // Never attempted (no deliverer ran in the lifetime): no Last-Attempt-Date (RFC 3464 2.3.7).
    lastAttemptAt: delivery.lastAttemptAt,
  };
}

function delayEntry(delivery: Delivery, giveUpAt: number): ReportEntry {
  // No SMTP reply yet (connection refused, timeout): 4.4.1, no answer from host.
  const status = statusOf(delivery.lastReply, '4.4.1');
  return {
    recipient: delivery.recipient,
    action: 'delayed',
    status: status.startsWith('4') ? status : `4${status.slice(1)}`,
    remoteMta: isSmtpReply(delivery.lastReply) ? hostOfHop(delivery.lastNextHop) : null,
    reply: delivery.lastReply,
    lastAttemptAt: delivery.lastAttemptAt,
    willRetryUntil: giveUpAt,
  };
}

export function createSweeper(
  config: Pick<Config, 'SMTP_HOSTNAME' | 'QUEUE_LIFETIME' | 'DELAY_WARNING' | 'RECORD_RETENTION' | 'SWEEP_INTERVAL' | 'DELIVERY_LEASE'>,
  store: Store,
  broker: Pick<Broker, 'publishMail'>,
  log: Logger,
) {
  const owner = `${hostname()}-${process.pid}-sweep-${randomBytes(3).toString('hex')}`;
  const reporter = createReporter(config, store, broker, log);
  let timer: NodeJS.Timeout | null = null;
  let running: Promise<void> | null = null;
  let stopping = false;

  /** Expire one message: report (unless suppressed), then record its claimed deliveries failed. */
  async function expireMessage(claims: ClaimedMessage[], now: number): Promise<void> {
    const first = claims[0];
    if (!first) return;
    const { message } = first;
    const deliveries = claims.flatMap((claim) => claim.deliveries);
    try {
      await reporter.report(message, deliveries.map((delivery) => expiryEntry(delivery)), 'expired');
    } catch (error) {
      // Not recorded: the lease runs out and the next sweep tries again.
      log.warn({ err: error, queueId: message.id }, 'expiry report could not be queued; will try again');
      return;
    }
    const outcomes: Outcome[] = deliveries.map((delivery) => ({ recipient: delivery.recipient, result: 'failed', reply: expiryReply(config.QUEUE_LIFETIME, delivery.lastReply), nextHop: null }));
    await store.settle(message.id, owner, outcomes, now);
    for (const delivery of deliveries) log.warn({ queueId: message.id, to: delivery.recipient, reply: delivery.lastReply }, 'delivery expired');
  }

  async function expire(now: number): Promise<number> {
    let expired = 0;
    for (;;) {
      if (stopping) break;
      const claims = await store.claim({ now, receivedBefore: now - config.QUEUE_LIFETIME, leaseMs: config.DELIVERY_LEASE, owner, limit: BATCH });
      if (claims.length === 0) break;
      // One report per message, across its routes.
      const byMessage = new Map<string, ClaimedMessage[]>();
      for (const claim of claims) byMessage.set(claim.message.id, [...(byMessage.get(claim.message.id) ?? []), claim]);
      for (const group of byMessage.values()) await expireMessage(group, now);
      expired += byMessage.size;
      if (claims.length < BATCH) break;
    }
    return expired;
  }

  async function warnDelays(now: number, after: number): Promise<number> {
    let warned = 0;
    for (;;) {
      if (stopping) break;
      const due = await store.takeDelayWarnings(now - after, now, BATCH);
      for (const { message, deliveries } of due) {
        if (deliveries.length === 0) continue;
        try {
          await reporter.report(message, deliveries.map((delivery) => delayEntry(delivery, message.receivedAt + config.QUEUE_LIFETIME)), 'delayed');
        } catch (error) {
          // The message is already marked warned: a delay notice is a courtesy, not retried.
          log.warn({ err: error, queueId: message.id }, 'delay notice could not be queued');
        }
      }
      warned += due.length;
      if (due.length < BATCH) break;
    }
    return warned;
  }

  async function sweep(): Promise<void> {
    const now = Date.now();
    const expired = await expire(now);
    const warned = config.DELAY_WARNING !== undefined && config.DELAY_WARNING < config.QUEUE_LIFETIME ? await warnDelays(now, config.DELAY_WARNING) : 0;
    const purged = await store.purge(now - config.RECORD_RETENTION);
    if (expired || warned || purged) log.info({ expired, warned, purged }, 'queue sweep');
  }

  function schedule(delay: number): void {
    if (stopping) return;
    timer = setTimeout(() => {
      running = sweep()
        .catch((error: unknown) => log.error({ err: error }, 'queue sweep failed'))
        .finally(() => {
          running = null;
          schedule(config.SWEEP_INTERVAL);
        });
    }, delay);
    timer.unref();
  }

  return {
    owner,
    /** One sweep now (tests, admin). */
    sweep,
    start(): void {
      schedule(Math.min(1000, config.SWEEP_INTERVAL));
    },
    async stop(): Promise<void> {
      stopping = true;
      if (timer) clearTimeout(timer);
      await running;
    },
  };
}
