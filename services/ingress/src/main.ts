import '@backupmx/shared/runtime/telemetry.ts';
import { createLogger } from '@backupmx/shared/runtime/logger.ts';
import { startBufferCollector } from '@backupmx/shared/runtime/young-gc.ts';
import { closeHttp, startHttp } from '@backupmx/shared/runtime/http.ts';
import { configOrExit, connectBroker, onShutdown, openStore } from '@backupmx/shared/runtime/process.ts';
import { startIngress } from './ingress.ts';
import { usesVerify } from './recipient-validation.ts';

const config = configOrExit('ingress');
const log = createLogger('ingress', config.LOG_LEVEL);
startBufferCollector(); // large mail: free the buffers it leaves behind early (issue 9)
const broker = await connectBroker(config, 'ingress', log);
// The store only holds the recipient verification cache here: opened when a domain verifies.
const store = usesVerify(config) ? await openStore(config, log) : null;
const ingress = await startIngress(config, broker, log, { store });
const http = await startHttp({
  host: config.HTTP_HOST,
  port: config.HTTP_PORT,
  log,
  ready: () => ({ broker: broker.connected(), smtp: ingress.listening(), ...(store ? { store: store.ready() } : {}) }),
});
onShutdown(log, async () => {
  await ingress.stop();
  await broker.close();
  await store?.close();
  await closeHttp(http);
});
