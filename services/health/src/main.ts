import '@backupmx/shared/runtime/telemetry.ts';
import { closeHttp, startHttp } from '@backupmx/shared/runtime/http.ts';
import { createLogger } from '@backupmx/shared/runtime/logger.ts';
import { configOrExit, connectBroker, onShutdown } from '@backupmx/shared/runtime/process.ts';
import { createMonitor } from './monitor.ts';

const config = configOrExit('health');
const log = createLogger('health', config.LOG_LEVEL);
const broker = await connectBroker(config, 'health', log);
const monitor = createMonitor(config, broker, log);
monitor.start();
const http = await startHttp({
  host: config.HTTP_HOST,
  port: config.HTTP_PORT,
  log,
  ready: () => ({ broker: broker.connected() }),
  routes: (app) => app.get('/status', (_req, res) => void res.json({ targets: monitor.status() })),
});
onShutdown(log, async () => {
  await monitor.stop();
  await broker.close();
  await closeHttp(http);
});
