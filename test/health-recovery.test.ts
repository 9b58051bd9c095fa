import assert from 'node:assert/strict';
import net, { type Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import type { EventKey, PrimaryEvent } from '../shared/src/broker/broker.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { createLogger } from '../shared/src/runtime/logger.ts';
import { createMemoryBroker } from '../shared/src/broker/memory-broker.ts';
import { createMonitor } from '../services/health/src/monitor.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { assertAllDelivered, sendMessages } from './support/mail.ts';
import { startPrimary } from './support/primary.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * Issue 9: a primary that comes back is seen at PROBE_INTERVAL_DOWN, not PROBE_INTERVAL, and the
 * PROBE_SUCCESSES hysteresis still holds. PROBE_INTERVAL is set to an hour here, so only the short
 * interval can bring these primaries up within the tests' time.
 */
describe('health: probing fast while the primary is down', () => {
  const dir = tempDir();
  after(() => dir.remove());

  it('a primary that flaps (every other probe refused) is never declared up; a steady one is, at the short interval', async () => {
    let mode: 'closed' | 'flapping' | 'steady' = 'closed';
    let accepted = 0;
    let flapProbes = 0;
    const sockets = new Set<Socket>();
    const server = net.createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.on('error', () => {});
      const good = mode === 'steady' || (mode === 'flapping' && accepted++ % 2 === 0);
      if (mode === 'flapping') flapProbes++;
      if (!good) return void socket.end('421 4.3.2 Service not available\r\n');
      socket.write('220 primary.test ESMTP\r\n');
      socket.on('data', (data) => {
        for (const line of data.toString('latin1').split('\r\n').filter(Boolean)) {
          if (/^EHLO /i.test(line)) socket.write('250 primary.test\r\n');
          else if (/^QUIT$/i.test(line)) socket.end('221 2.0.0 Bye\r\n');
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    const port = (server.address() as net.AddressInfo).port;
    const target = `127.0.0.1:${port}`;
    mode = 'flapping';
    // Down first: three refused greetings in a row.
    let refuseFirst = 3;
    const original = server.listeners('connection')[0] as (socket: Socket) => void;
    server.removeAllListeners('connection');
    server.on('connection', (socket: Socket) => {
      if (refuseFirst > 0) {
        refuseFirst--;
        socket.on('error', () => {});
        return void socket.end('421 4.3.2 Service not available\r\n');
      }
      original(socket);
    });

    const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: target, DATA_DIR: dir.path, PROBE_INTERVAL: '1h', PROBE_INTERVAL_DOWN: '100ms', PROBE_TIMEOUT: '2s', PROBE_FAILURES: '3', PROBE_SUCCESSES: '2' });
    const log = createLogger('test', 'silent');
    const broker = createMemoryBroker(dir.path, log);
    const events: Array<[EventKey, PrimaryEvent]> = [];
    await broker.subscribe(['primary.up', 'primary.down'], (key, payload) => events.push([key, payload as PrimaryEvent]));
    const monitor = createMonitor(config, broker, log);
    monitor.start();
    try {
      await waitFor('primary.down', () => events.some(([key]) => key === 'primary.down'));
      await waitFor('ten probes of the flapping primary', () => flapProbes >= 10);
      assert.deepEqual(events.map(([key]) => key), ['primary.down'], 'one success at a time never declares it up');
      mode = 'steady';
      await waitFor('primary.up', () => events.some(([key]) => key === 'primary.up'), 10_000);
      assert.deepEqual(events.map(([key, event]) => [key, event.target]), [['primary.down', target], ['primary.up', target]]);
      assert.equal(monitor.status()[target]?.state, 'up');
    } finally {
      await monitor.stop();
      await broker.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('with the default PROBE_INTERVAL_DOWN, mail queued while the primary was down reaches it once it listens, after PROBE_SUCCESSES probes', async () => {
    const primaryPort = await freePort();
    const target = `127.0.0.1:${primaryPort}`;
    // RETRY_SCHEDULE of an hour: the deliverer's own retries cannot deliver it; only primary.up can.
    const system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', PRIMARY: target, PROBE_INTERVAL: '1h', RETRY_SCHEDULE: '1h' }, { deliver: true });
    const log = createLogger('test', 'silent');
    const monitor = createMonitor(system.config, system.broker, log);
    let primary: Awaited<ReturnType<typeof startPrimary>> | null = null;
    let sessionsWhenUp: number | null = null;
    await system.broker.subscribe(['primary.up'], () => {
      sessionsWhenUp = primary?.sessions.length ?? 0;
    });
    monitor.start();
    try {
      await waitFor('the primary to be seen down', () => monitor.status()[target]?.state === 'down', 30_000);
      const sent = await sendMessages(system.port, 3);
      assert.ok(sent.every((message) => message.id), sent.map((message) => message.reply).join('; '));
      await waitFor('all three queued', async () => (await system.store.stats()).queued[target] === 3);
      primary = await startPrimary({ port: primaryPort });
      const reached = primary;
      await waitFor('the three messages at the primary', () => reached.messages.length >= 3, 60_000);
      assert.equal(assertAllDelivered(sent, reached.messages), 3, 'each once');
      assert.ok(sessionsWhenUp !== null, 'primary.up was published');
      const up = sessionsWhenUp as number;
      assert.ok(up >= system.config.PROBE_SUCCESSES, `up after ${up} sessions, PROBE_SUCCESSES is ${system.config.PROBE_SUCCESSES}`);
      assert.ok(reached.sessions.slice(0, up).every((session) => !session.mail), 'no delivery before the primary was declared up: the sessions before it were probes');
    } finally {
      await monitor.stop();
      await system.close();
      await primary?.close();
    }
  });
});
