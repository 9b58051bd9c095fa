import '@backupmx/shared/telemetry.ts';
import { createLogger } from '@backupmx/shared/logger.ts';
import { closeHttp, startHttp } from '@backupmx/shared/http.ts';
import { configOrExit, connectBroker, onShutdown } from '@backupmx/shared/runtime.ts';
import { startIngress } from './ingress.ts';

const config = configOrExit('ingress');
const log = createLogger('ingress', config.LOG_LEVEL);
const broker = await connectBroker(config, 'ingress', log);
const ingress = await startIngress(config, broker, log);
const http = await startHttp({ host: config.HTTP_HOST, port: config.HTTP_PORT, log, ready: () => ({ broker: broker.connected(), smtp: ingress.listening() }) });
onShutdown(log, async () => {
  await ingress.stop();
  await broker.close();
  await closeHttp(http);
});
