import '@backupmx/shared/runtime/telemetry.ts';
import { closeHttp, startHttp } from '@backupmx/shared/runtime/http.ts';
import { createLogger } from '@backupmx/shared/runtime/logger.ts';
import { startBufferCollector } from '@backupmx/shared/runtime/young-gc.ts';
import { configOrExit, connectBroker, onShutdown, openStore, requireBroker, requireSharedDataDir } from '@backupmx/shared/runtime/process.ts';
import { createDeliverer } from './deliverer.ts';

const config = configOrExit('deliverer');
requireBroker(config, 'deliverer');
requireSharedDataDir(config, 'deliverer');
const log = createLogger('deliverer', config.LOG_LEVEL);
startBufferCollector(); // large mail: free the buffers it leaves behind early (issue 9)
const store = await openStore(config, log);
const broker = await connectBroker(config, 'deliverer', log);
const deliverer = createDeliverer(config, store, broker, log);
await deliverer.start();
const http = await startHttp({
  host: config.HTTP_HOST,
  port: config.HTTP_PORT,
  log,
  ready: () => ({ broker: broker.connected(), store: store.ready() }),
  routes: (app) => app.get('/status', (_req, res) => void res.json({ owner: deliverer.owner, targets: deliverer.targets() })),
});
onShutdown(log, async () => {
  await deliverer.stop();
  await broker.close();
  await store.close();
  await closeHttp(http);
});
