import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertAllDelivered, sendMessages } from './support/mail.ts';
import { startPrimary } from './support/primary.ts';
import { spawnService, waitReady, type Service } from './support/processes.ts';
import { createVhost } from './support/rabbitmq.ts';
import { startProxy } from './support/tcp-proxy.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * Issue 2, every service: when RabbitMQ goes away and comes back, each service reconnects by itself
 * (broker-cut.test.ts covers ingress alone). All four reach RabbitMQ through a TCP proxy that the
 * test closes and opens again; afterwards mail flows end to end and health's events reach the
 * deliverer again.
 */
describe('every service reconnects to RabbitMQ by itself', () => {
  const vhost = createVhost();
  const dir = tempDir();
  let proxy: Awaited<ReturnType<typeof startProxy>>;
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  const services: Service[] = [];
  let smtpPort: number;
  let target: string;

  before(async () => {
    proxy = await startProxy(5672);
    primary = await startPrimary();
    smtpPort = await freePort();
    target = `127.0.0.1:${primary.port}`;
    const env = {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: target,
      AMQP_URL: vhost.url.replace(':5672/', `:${proxy.port}/`),
      DATA_DIR: join(dir.path, 'data'),
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(smtpPort),
      SENDER_AUTH: 'false',
      PROBE_INTERVAL: '500ms',
      PROBE_TIMEOUT: '1s',
    };
    for (const entry of ['spool', 'health', 'deliverer', 'ingress'] as const) {
      services.push(spawnService(entry, entry, { ...env, HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs')));
    }
    await Promise.all(services.map((service) => waitReady(service)));
  });
  after(async () => {
    await Promise.all(services.map((service) => service.stop('SIGKILL')));
    await proxy.close();
    await primary.close();
    vhost.remove();
    dir.remove();
  });

  const readyz = async (service: Service) => (await fetch(`http://127.0.0.1:${service.httpPort}/readyz`)).status;
  const deliverer = () => services.find((service) => service.name === 'deliverer') as Service;
  const lastEventAt = async () => {
    const body = (await (await fetch(`http://127.0.0.1:${deliverer().httpPort}/status`)).json()) as { targets: Record<string, { at: number }> };
    return body.targets[target]?.at ?? 0;
  };

  it('delivers mail before the cut', async () => {
    const sent = await sendMessages(smtpPort, 2);
    await waitFor('2 messages at the primary', () => primary.messages.length >= 2);
    assertAllDelivered(sent, primary.messages);
  });

  it('every service says not ready while the broker is cut off', async () => {
    await proxy.close();
    for (const service of services) await waitFor(`${service.name} /readyz 503`, async () => (await readyz(service)) === 503);
  });

  it('every service is ready again after the broker is back, and mail and events flow', async () => {
    await proxy.open();
    const reopened = Date.now();
    for (const service of services) await waitFor(`${service.name} to reconnect`, async () => (await readyz(service)) === 200, 30_000);
    await waitFor('health events to reach the deliverer again', async () => (await lastEventAt()) > reopened, 10_000);
    const before = primary.messages.length;
    const sent = await sendMessages(smtpPort, 3);
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as /);
    await waitFor('3 more messages at the primary', () => primary.messages.length >= before + 3);
    assertAllDelivered(sent, primary.messages.slice(before));
  });
});
