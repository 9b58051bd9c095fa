import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { join } from 'node:path';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { startPrimary } from './support/primary.ts';
import { oneProcessEnv, spawnService, waitReady, type Service } from './support/processes.ts';
import { assertAllDelivered, sendMessages } from './support/mail.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * `npm start` as an administrator runs it: one process, the in-process broker, SQLite under
 * DATA_DIR. The primary is down while 50 messages arrive, then comes back.
 */
describe('single process: mail kept while the primary is down, delivered when it is back', () => {
  const dir = tempDir();
  let system: Service;
  let primaryPort: number;
  let smtpPort: number;
  let httpPort: number;
  const status = async () => (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as { targets: Record<string, { state: string }> };

  before(async () => {
    [primaryPort, smtpPort, httpPort] = [await freePort(), await freePort(), await freePort()];
    system = spawnService('all', 'all', oneProcessEnv({ primary: primaryPort, smtp: smtpPort, http: httpPort }, join(dir.path, 'data')), join(dir.path, 'logs'));
    await waitReady(system);
  });
  after(async () => {
    await system.stop('SIGKILL');
    dir.remove();
  });

  it('accepts 50 messages, keeps them, and delivers them all within 5 s of the primary being seen up', async () => {
    const sent = await sendMessages(smtpPort, 50, { concurrency: 5 });
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/, `message ${message.index}`);
    await waitFor('health to report the primary down', async () => (await status()).targets[`127.0.0.1:${primaryPort}`]?.state === 'down');
    const primary = await startPrimary({ port: primaryPort });
    try {
      await waitFor('health to see the primary up', async () => (await status()).targets[`127.0.0.1:${primaryPort}`]?.state === 'up', 15_000);
      await waitFor('all 50 messages at the primary within 5 s', () => new Set(primary.messages.map((message) => message.raw.toString('latin1').slice(0, 400))).size >= 50, 5_000);
      assertAllDelivered(sent, primary.messages);
      // Delivered mail leaves the spool.
      const store = await openSqliteStore(join(dir.path, 'data', 'spool.sqlite'));
      try {
        await waitFor('the spool to be empty', async () => (await store.stats()).messages === 0);
      } finally {
        await store.close();
      }
    } finally {
      await primary.close();
    }
  });

  it('stops on SIGTERM with exit code 0', async () => {
    assert.equal(await system.stop('SIGTERM'), 0);
  });
});
