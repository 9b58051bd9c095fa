import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { EventKey, PrimaryEvent } from '../shared/src/broker/broker.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { createLogger } from '../shared/src/runtime/logger.ts';
import { createMemoryBroker } from '../shared/src/broker/memory-broker.ts';
import { createMonitor } from '../services/health/src/monitor.ts';
import { startPrimary } from './support/primary.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * Issue 2, health: primary.down / primary.up once per transition (after PROBE_FAILURES /
 * PROBE_SUCCESSES consecutive results), primary.status for the target every interval.
 */
describe('health monitor: the events it publishes', () => {
  const dir = tempDir();
  after(() => dir.remove());

  it('publishes primary.down after the failures, primary.up after the successes, and primary.status every round', async () => {
    const port = await freePort();
    const target = `127.0.0.1:${port}`;
    const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: target, DATA_DIR: dir.path, PROBE_INTERVAL: '100ms', PROBE_TIMEOUT: '1s', PROBE_FAILURES: '3', PROBE_SUCCESSES: '2' });
    const log = createLogger('test', 'silent');
    const broker = createMemoryBroker(dir.path, log);
    const events: Array<[EventKey, PrimaryEvent]> = [];
    await broker.subscribe(['primary.up', 'primary.down', 'primary.status'], (key, payload) => events.push([key, payload as PrimaryEvent]));
    const monitor = createMonitor(config, broker, log);
    monitor.start();
    let primary: Awaited<ReturnType<typeof startPrimary>> | null = null;
    try {
      await waitFor('primary.down', () => events.some(([key]) => key === 'primary.down'));
      const statusesBeforeDown = events.findIndex(([key]) => key === 'primary.down');
      assert.deepEqual(
        events.slice(0, statusesBeforeDown).map(([key, event]) => [key, event.state]),
        [['primary.status', 'unknown'], ['primary.status', 'unknown']],
        'two failed rounds leave the target unknown; the third makes it down',
      );
      await waitFor('more status rounds while down', () => events.filter(([key, event]) => key === 'primary.status' && event.state === 'down').length >= 3);
      primary = await startPrimary({ port });
      await waitFor('primary.up', () => events.some(([key]) => key === 'primary.up'));
      await waitFor('a status round after up', () => events.some(([key, event]) => key === 'primary.status' && event.state === 'up'));
      await monitor.stop();
      const transitions = events.filter(([key]) => key !== 'primary.status').map(([key, event]) => [key, event.target, event.state]);
      assert.deepEqual(transitions, [['primary.down', target, 'down'], ['primary.up', target, 'up']], 'one event per transition');
      assert.ok(events.every(([, event]) => event.target === target));
    } finally {
      await monitor.stop();
      await primary?.close();
      await broker.close();
    }
  });
});
