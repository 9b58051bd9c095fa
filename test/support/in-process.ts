import { join } from 'node:path';
import { loadConfig, type Config } from '../../shared/src/runtime/config.ts';
import { createLogger } from '../../shared/src/runtime/logger.ts';
import { createMemoryBroker } from '../../shared/src/broker/memory-broker.ts';
import { openSqliteStore } from '../../shared/src/store/sqlite-store.ts';
import { startIngress, type IngressOptions } from '../../services/ingress/src/ingress.ts';
import { startSpool } from '../../services/spool/src/spool.ts';
import { createDeliverer, type DelivererOptions } from '../../services/deliverer/src/deliverer.ts';
import { freePort, tempDir } from './util.ts';

/**
 * Ingress and spool (and, with `deliver`, a deliverer with those options) in this process with the in-process broker
 * and a fresh SQLite store (`storeSync`: the store's sync in place of its fdatasync of the WAL).
 */
export async function startIngressWithSpool(env: Record<string, string>, options: { deliver?: boolean | DelivererOptions; ingress?: IngressOptions; storeSync?: () => Promise<void> } = {}) {
  const dir = tempDir();
  const port = await freePort();
  const config: Config = loadConfig({ PRIMARY: '127.0.0.1:1', SMTP_HOST: '127.0.0.1', SMTP_PORT: String(port), SMTP_HOSTNAME: 'backup.example.test', DATA_DIR: dir.path, ...env });
  const log = createLogger('test', 'silent');
  const store = await openSqliteStore(join(dir.path, 'spool.sqlite'), options.storeSync ? { sync: options.storeSync } : {});
  const broker = createMemoryBroker(join(dir.path, 'dead'), log);
  await startSpool(config, store, broker, log);
  const deliverer = options.deliver ? createDeliverer(config, store, broker, log, options.deliver === true ? {} : options.deliver) : null;
  await deliverer?.start();
  const ingress = await startIngress(config, broker, log, { store, ...options.ingress });
  return {
    dataDir: dir.path,
    port,
    config,
    store,
    broker,
    ingress,
    async close() {
      await ingress.stop();
      await deliverer?.stop();
      await broker.close();
      await store.close();
      dir.remove();
    },
  };
}
