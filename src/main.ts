/**
 * Single-process mode (`npm start`): ingress, spool, health and deliverer in one process, joined by
 * the in-process broker (or RabbitMQ when AMQP_URL is set), with the SQLite store under DATA_DIR.
 */
import '@backupmx/shared/runtime/telemetry.ts';
import { join } from 'node:path';
import { closeHttp, startHttp } from '@backupmx/shared/runtime/http.ts';
import { diskHeadroom } from '@backupmx/shared/runtime/config.ts';
import { createDiskHeadroom, diskDetail } from '@backupmx/shared/runtime/disk-headroom.ts';
import { createLogger } from '@backupmx/shared/runtime/logger.ts';
import { startBufferCollector } from '@backupmx/shared/runtime/young-gc.ts';
import { createMemoryBroker } from '@backupmx/shared/broker/memory-broker.ts';
import { configOrExit, connectBroker, onShutdown, openStore } from '@backupmx/shared/runtime/process.ts';
import { createDeliverer } from '@backupmx/deliverer/src/deliverer.ts';
import { createMonitor } from '@backupmx/health/src/monitor.ts';
import { startIngress } from '@backupmx/ingress/src/ingress.ts';
import { startOperations } from '@backupmx/spool/src/operations.ts';
import { startSpool } from '@backupmx/spool/src/spool.ts';
import { createSweeper } from '@backupmx/spool/src/sweep.ts';

const config = configOrExit('all');
const log = createLogger('backupmx', config.LOG_LEVEL);
startBufferCollector(); // large mail: free the buffers it leaves behind early (issue 9)
const store = await openStore(config, log, { thread: true }); // the SMTP sessions share this event loop
const broker = config.AMQP_URL ? await connectBroker(config, 'all', log) : createMemoryBroker(join(config.DATA_DIR, 'dead'), log);
await startSpool(config, store, broker, log);
// Expiry, delay notices and record retention, whether or not any primary answers (issue 4).
const sweeper = createSweeper(config, store, broker, log);
sweeper.start();
const operations = await startOperations(config, store, broker, log);
const deliverer = createDeliverer(config, store, broker, log);
await deliverer.start();
const monitor = createMonitor(config, broker, log);
monitor.start();
// The SQLite store writes under DATA_DIR: keep DISK_HEADROOM free there for the queue's own writes.
const disk = !config.MONGODB_URL && diskHeadroom(config) > 0 ? createDiskHeadroom(config.DATA_DIR, diskHeadroom(config), { spare: () => store.spareBytes?.() ?? 0 }) : null;
const ingress = await startIngress(config, broker, log, { store, disk });
const http = await startHttp({
  host: config.HTTP_HOST,
  port: config.HTTP_PORT,
  log,
  ready: () => ({ broker: broker.connected(), store: store.ready(), smtp: ingress.listening(), ...(disk ? { disk: !disk.check().low } : {}) }),
  ...(disk ? { detail: () => diskDetail(disk) } : {}),
  routes: (app) => {
    app.get('/status', (_req, res) => void res.json({ targets: monitor.status() }));
    operations.routes(app);
  },
});
onShutdown(log, async () => {
  await sweeper.stop();
  await operations.stop();
  await ingress.stop();
  await monitor.stop();
  await deliverer.stop();
  await broker.close();
  await store.close();
  await closeHttp(http);
});
