import type { Broker } from '@backupmx/shared/broker.ts';
import type { Config } from '@backupmx/shared/config.ts';
import type { Logger } from '@backupmx/shared/logger.ts';
import { createSmtpListener } from './smtp-listener.ts';
import { observeSmtp } from './smtp-metrics.ts';

export interface Ingress {
  listening(): boolean;
  /** Stop accepting connections; let sessions in flight finish (up to smtp-server's closeTimeout). */
  stop(): Promise<void>;
}

export async function startIngress(config: Config, broker: Broker, log: Logger): Promise<Ingress> {
  const server = observeSmtp(createSmtpListener(config, broker, log));
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(config.SMTP_PORT, config.SMTP_HOST, () => {
      server.server.off('error', reject);
      log.info({ address: server.server.address() }, 'smtp listening');
      resolve();
    });
  });
  return {
    listening: () => server.server.listening,
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
