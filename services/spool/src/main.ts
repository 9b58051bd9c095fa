import '@backupmx/shared/runtime/telemetry.ts';
import { closeHttp, startHttp } from '@backupmx/shared/runtime/http.ts';
import { createLogger } from '@backupmx/shared/runtime/logger.ts';
import { startBufferCollector } from '@backupmx/shared/runtime/young-gc.ts';
import { configOrExit, connectBroker, onShutdown, openStore, requireBroker, requireSharedDataDir } from '@backupmx/shared/runtime/process.ts';
import { diskHeadroom } from '@backupmx/shared/runtime/config.ts';
import { createDiskHeadroom, diskDetail } from '@backupmx/shared/runtime/disk-headroom.ts';
import { startOperations } from './operations.ts';
import { startSpool } from './spool.ts';
import { createSweeper } from './sweep.ts';

const config = configOrExit('spool');
requireBroker(config, 'spool');
requireSharedDataDir(config, 'spool');
const log = createLogger('spool', config.LOG_LEVEL);
startBufferCollector(); // large mail: free the buffers it leaves behind early (issue 9)
const store = await openStore(config, log);
const broker = await connectBroker(config, 'spool', log);
// SQLite under DATA_DIR: below DISK_HEADROOM new mail waits in RabbitMQ while the deliverers drain the spool.
const disk = !config.MONGODB_URL && diskHeadroom(config) > 0 ? createDiskHeadroom(config.DATA_DIR, diskHeadroom(config), { spare: () => store.spareBytes?.() ?? 0 }) : null;
await startSpool(config, store, broker, log, disk);
// Expiry, delay notices and record retention, whether or not any primary answers (issue 4).
const sweeper = createSweeper(config, store, broker, log);
sweeper.start();
const operations = await startOperations(config, store, broker, log);
const http = await startHttp({ host: config.HTTP_HOST, port: config.HTTP_PORT, log, ready: () => ({ broker: broker.connected(), store: store.ready(), ...(disk ? { disk: !disk.check().low } : {}) }), ...(disk ? { detail: () => diskDetail(disk, 'new mail waits in RabbitMQ') } : {}), routes: operations.routes });
onShutdown(log, async () => {
  await sweeper.stop();
  await operations.stop();
  await broker.close();
  await store.close();
  await closeHttp(http);
});
