import type { Express } from 'express';
import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { beforeScrape, observeSpool } from '@backupmx/shared/runtime/metrics.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import { adminRouter } from './admin-api.ts';
import { consoleRouter } from './console/console.ts';
import { createNotifier, primaryAlert, queueAgeAlert, queueAgeChange } from './alerts.ts';
import { trackPrimaries } from './primaries.ts';

/**
 * The spool's operations side: the admin API (mounted by `routes` at /api) and the web console (at /,
 * unless CONSOLE=false), the spool gauges read
 * from the store on each scrape, the primaries' states from the health events, and the alerts
 * (ALERT_WEBHOOK: primary down/up, ALERT_QUEUE_AGE).
 */
export async function startOperations(config: Config, store: Store, broker: Broker, log: Logger) {
  const notifier = createNotifier({ urls: config.ALERT_WEBHOOK, host: config.SMTP_HOSTNAME, log });
  const primaries = await trackPrimaries(broker, (transition, state) => {
    log[transition.to === 'down' ? 'warn' : 'info']({ target: transition.target, from: transition.from, to: transition.to }, 'primary state changed');
    const alert = primaryAlert(transition, state, config.SMTP_HOSTNAME);
    if (alert) notifier.send(alert);
  });
  const removeScrape = beforeScrape(async () => observeSpool(await store.stats(), Date.now()));

  let timer: NodeJS.Timeout | null = null;
  const threshold = config.ALERT_QUEUE_AGE;
  if (threshold !== undefined) {
    let alerting = false;
    let checking = false;
    timer = setInterval(() => {
      if (checking) return;
      checking = true;
      store
        .stats()
        .then((stats) => {
          const now = Date.now();
          const change = queueAgeChange(alerting, stats.oldestQueuedAt, now, threshold);
          if (!change) return;
          alerting = change === 'fire';
          notifier.send(queueAgeAlert(change, stats, now, threshold, config.SMTP_HOSTNAME));
        })
        .catch((error: unknown) => log.warn({ err: error }, 'queue age check failed'))
        .finally(() => {
          checking = false;
        });
    }, Math.min(30_000, Math.max(250, threshold / 4)));
    timer.unref();
  }

  return {
    routes(app: Express): void {
      app.use('/api', adminRouter({ config, store, broker, primaries, log }));
      if (config.CONSOLE) app.use(consoleRouter({ config, store, broker, primaries, log }));
    },
    async stop(): Promise<void> {
      if (timer) clearInterval(timer);
      removeScrape();
      await notifier.stop();
    },
  };
}
