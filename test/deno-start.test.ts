import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { assertAllDelivered, sendMessages } from './support/mail.ts';
import { metric } from './support/metrics.ts';
import { startPrimary } from './support/primary.ts';
import { DENO, oneProcessEnv, spawnCommand, waitReady, type Service } from './support/processes.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * `deno task start` as the README says to run it on Deno: one process, the permissions deno.json
 * names (not -A), the in-process broker, SQLite under DATA_DIR. The primary is down when the mail
 * arrives, then comes up.
 */
describe('deno task start: mail kept while the primary is down, delivered intact when it is up', () => {
  const dir = tempDir();
  let system: Service;
  let primaryPort: number;
  let smtpPort: number;
  let httpPort: number;
  const status = async () => (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as { targets: Record<string, { state: string }> };

  before(async () => {
    [primaryPort, smtpPort, httpPort] = [await freePort(), await freePort(), await freePort()];
    system = spawnCommand('deno-task-start', [DENO, 'task', 'start'], {
      HOME: process.env.HOME ?? dir.path, // Deno's module cache
      ...(process.env.DENO_DIR ? { DENO_DIR: process.env.DENO_DIR } : {}),
      ...oneProcessEnv({ primary: primaryPort, smtp: smtpPort, http: httpPort }, join(dir.path, 'data')),
      NO_COLOR: '1',
    }, join(dir.path, 'logs'));
    await waitReady(system);
  });
  after(async () => {
    await system.stop('SIGKILL');
    dir.remove();
  });

  it('accepts mail from nodemailer while the primary is down, and delivers it byte for byte once it is up', async () => {
    await waitFor('health to report the primary down', async () => (await status()).targets[`127.0.0.1:${primaryPort}`]?.state === 'down');
    const sent = await sendMessages(smtpPort, 10, { concurrency: 2 });
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/, `message ${message.index}`);
    const primary = await startPrimary({ port: primaryPort });
    try {
      await waitFor('all 10 messages at the primary', () => new Set(primary.messages.map((message) => message.raw.toString('latin1').slice(0, 400))).size >= 10, 60_000);
      assertAllDelivered(sent, primary.messages);
    } finally {
      await primary.close();
    }
  });

  it("runs with deno.json's --v8-flags: a young generation within two 8 MiB semi-spaces (GET /metrics)", async () => {
    const newSpace = await metric(httpPort, 'nodejs_heap_space_size_total_bytes', { space: 'new' });
    assert.ok(newSpace !== undefined && newSpace > 0 && newSpace <= 16 * 1024 * 1024, `new space ${newSpace} bytes`);
  });

  it('stops on SIGTERM (deno task passes it on) with exit code 0', async () => {
    assert.equal(await system.stop('SIGTERM'), 0);
  });
});
