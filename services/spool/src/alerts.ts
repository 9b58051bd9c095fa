import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { alertNotifications } from '@backupmx/shared/runtime/metrics.ts';
import type { QueueStats } from '@backupmx/shared/store/store.ts';
import type { PrimaryState, Transition } from './primaries.ts';

export interface Alert {
  event: 'primary.down' | 'primary.up' | 'queue.age' | 'queue.age.ok';
  /** One human line (Slack and Mattermost incoming webhooks show `text`). */
  text: string;
  [field: string]: unknown;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The alert for a primary's transition: down whenever it goes down, up only when it was down. */
export function primaryAlert(transition: Transition, state: PrimaryState, host: string): Alert | null {
  if (transition.to === 'down') {
    return {
      event: 'primary.down',
      text: `${host}: primary ${transition.target} is down${transition.lastError ? ` (${transition.lastError})` : ''}; mail for it is kept in the spool`,
      target: transition.target,
      since: iso(state.since),
      lastError: transition.lastError,
    };
  }
  if (transition.to === 'up' && transition.from === 'down') {
    return { event: 'primary.up', text: `${host}: primary ${transition.target} is up again; the spool is being delivered`, target: transition.target, since: iso(state.since), lastError: null };
  }
  return null;
}

/**
 * The queue-age rule: fire once when the oldest queued message passes `thresholdMs`, resolve once
 * when no queued message is that old any more.
 */
export function queueAgeChange(alerting: boolean, oldestQueuedAt: number | null, now: number, thresholdMs: number): 'fire' | 'resolve' | null {
  const old = oldestQueuedAt !== null && now - oldestQueuedAt > thresholdMs;
  if (old && !alerting) return 'fire';
  if (!old && alerting) return 'resolve';
  return null;
}

export function queueAgeAlert(change: 'fire' | 'resolve', stats: QueueStats, now: number, thresholdMs: number, host: string): Alert {
  const queued = Object.values(stats.queued).reduce((sum, count) => sum + count, 0);
  const age = stats.oldestQueuedAt === null ? 0 : Math.round((now - stats.oldestQueuedAt) / 1000);
  const fields = { oldestQueuedAt: iso(stats.oldestQueuedAt), ageSeconds: age, thresholdSeconds: Math.round(thresholdMs / 1000), messages: stats.messages, queued };
  return change === 'fire'
    ? { event: 'queue.age', text: `${host}: the oldest queued message has waited ${age} s (more than ${fields.thresholdSeconds} s); ${queued} deliveries queued`, ...fields }
    : { event: 'queue.age.ok', text: `${host}: no queued message is older than ${fields.thresholdSeconds} s any more`, ...fields };
}

export interface NotifierOptions {
  urls: readonly string[];
  host: string;
  log: Logger;
  /** Attempts per URL (first try included). */
  attempts?: number;
  /** Wait before the second attempt; doubles each time (at most 60 s). */
  firstRetryMs?: number;
  timeoutMs?: number;
}

/**
 * Sends alerts as a JSON POST to every ALERT_WEBHOOK URL, in the background: retried with
 * exponential backoff on network errors, timeouts, 408, 429 and 5xx; logged; never awaited by the
 * mail path.
 */
export function createNotifier(options: NotifierOptions) {
  const { urls, host, log, attempts = 6, firstRetryMs = 1000, timeoutMs = 10_000 } = options;
  const stopping = new AbortController();
  const pending = new Set<Promise<void>>();

  async function post(url: string, body: string, alert: Alert): Promise<void> {
    let delay = firstRetryMs;
    for (let attempt = 1; ; attempt += 1) {
      let problem: string;
      let retry = true;
      try {
        const response = await fetch(url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'user-agent': 'backupmx-alerts' },
          body,
          signal: AbortSignal.any([stopping.signal, AbortSignal.timeout(timeoutMs)]),
        });
        await response.body?.cancel().catch(() => {});
        if (response.ok) {
          alertNotifications.inc({ result: 'sent' });
          log.info({ url, alert: alert.event, attempt }, 'alert sent');
          return;
        }
        problem = `HTTP ${response.status}`;
        retry = response.status >= 500 || response.status === 408 || response.status === 429;
      } catch (error) {
        problem = (error as Error).message;
      }
      if (stopping.signal.aborted || !retry || attempt >= attempts) {
        alertNotifications.inc({ result: 'failed' });
        log.error({ url, alert: alert.event, attempt, error: problem }, 'alert not delivered');
        return;
      }
      log.warn({ url, alert: alert.event, attempt, error: problem, retryInMs: delay }, 'alert not delivered yet; retrying');
      await sleep(delay, undefined, { signal: stopping.signal }).catch(() => {});
      delay = Math.min(delay * 2, 60_000);
    }
  }

  return {
    send(alert: Alert): void {
      log.info({ alert: alert.event, text: alert.text }, 'alert');
      if (urls.length === 0 || stopping.signal.aborted) return;
      const body = JSON.stringify({ ...alert, host, at: new Date().toISOString() });
      for (const url of urls) {
        const work = post(url, body, alert).catch((error: unknown) => log.error({ err: error, url }, 'alert failed'));
        pending.add(work);
        void work.finally(() => pending.delete(work));
      }
    },
    /** Give requests in flight a moment, then abandon them and every retry still waiting. */
    async stop(graceMs = 2000): Promise<void> {
      const timer = sleep(graceMs, undefined, { signal: stopping.signal }).catch(() => {});
      await Promise.race([Promise.allSettled([...pending]), timer]);
      stopping.abort();
      await Promise.allSettled([...pending]);
    },
  };
}

export type Notifier = ReturnType<typeof createNotifier>;
