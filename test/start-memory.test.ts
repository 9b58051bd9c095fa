import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { sendMessages } from './support/mail.ts';
import { metric } from './support/metrics.ts';
import { MALLOC_ENV, oneProcessEnv, ROOT, spawnCommand, V8_FLAGS, waitReady, type Service } from './support/processes.ts';
import { freePort, tempDir } from './support/util.ts';

/**
 * The memory settings hold however a user starts backupmx (issue 9): a bounded young generation
 * (V8's default semi-spaces grow to 64 MiB under load, about 100 MiB of a process's peak RSS) and
 * glibc handing large freed buffers back (MALLOC_ENV). Both are read only when the process starts,
 * so they have to be on every command line: npm's start scripts, Deno's tasks, both images, and the
 * processes the tests and benches spawn (spawnService).
 */
const text = (file: string) => readFileSync(join(ROOT, file), 'utf8');
const ENTRIES = ['src/main.ts', 'services/ingress/src/main.ts', 'services/spool/src/main.ts', 'services/health/src/main.ts', 'services/deliverer/src/main.ts'];
/** Node's new space holds two semi-spaces: 16 MiB with 8 MiB ones (V8's default reaches 128 MiB). */
const NEW_SPACE_MAX = 16 * 1024 * 1024;

const ASSIGNMENTS = Object.entries(MALLOC_ENV).map(([key, value]) => `${key}=${value}`).join(' ');

describe('memory settings: every way of starting a service has them', () => {
  it('npm start and the four npm run start:* set MALLOC_ENV and pass V8_FLAGS to node', () => {
    const scripts = (JSON.parse(text('package.json')) as { scripts: Record<string, string> }).scripts;
    for (const [name, entry] of [['start', ENTRIES[0]], ['start:ingress', ENTRIES[1]], ['start:spool', ENTRIES[2]], ['start:health', ENTRIES[3]], ['start:deliverer', ENTRIES[4]]] as const) {
      assert.equal(scripts[name], `${ASSIGNMENTS} node ${V8_FLAGS.join(' ')} ${entry}`, name);
    }
  });

  it("deno.json's start tasks and Dockerfile.deno set them too (V8_FLAGS as --v8-flags), and so does the Node image", () => {
    const tasks = (JSON.parse(text('deno.json')) as { tasks: Record<string, string> }).tasks;
    const v8 = `--v8-flags=${V8_FLAGS.join(',')}`;
    for (const name of ['start', 'start:ingress', 'start:spool', 'start:health', 'start:deliverer']) assert.ok(tasks[name]?.startsWith(`${ASSIGNMENTS} ./node_modules/deno/deno run ${v8} `), name);
    for (const file of ['Dockerfile', 'Dockerfile.deno']) {
      const env = text(file).split('\n').filter((line) => line.startsWith('ENV ')).join(' ');
      for (const assignment of ASSIGNMENTS.split(' ')) assert.match(env, new RegExp(`(^| )${assignment}( |$)`), `${file}: ENV ${assignment}`);
    }
    assert.match(text('Dockerfile'), new RegExp(`^ENTRYPOINT \\["node", ${V8_FLAGS.map((f) => `"${f}"`).join(', ')}\\]$`, 'm'));
    assert.match(text('Dockerfile.deno'), new RegExp(`^ENTRYPOINT \\["deno", "run", "${v8}", `, 'm'));
  });

  describe("npm start's command, run as npm runs it", () => {
    const dir = tempDir();
    let system: Service;
    let smtpPort: number;
    let httpPort: number;
    before(async () => {
      const words = (JSON.parse(text('package.json')) as { scripts: { start: string } }).scripts.start.split(' ');
      const assignments = words.filter((word) => /^\w+=/.test(word));
      const script = words.slice(assignments.length);
      assert.equal(script[0], 'node');
      [smtpPort, httpPort] = [await freePort(), await freePort()];
      // npm puts node_modules/.bin first on PATH: its node is Node 24.
      const env = { ...oneProcessEnv({ primary: await freePort(), smtp: smtpPort, http: httpPort }, join(dir.path, 'data')), ...Object.fromEntries(assignments.map((word) => word.split('='))) };
      system = spawnCommand('npm-start', [join(ROOT, 'node_modules', '.bin', 'node'), ...script.slice(1)], env, join(dir.path, 'logs'));
      await waitReady(system);
    });
    after(async () => {
      await system.stop('SIGKILL');
      dir.remove();
    });

    it('keeps its new space within two 8 MiB semi-spaces while it takes mail (GET /metrics)', async () => {
      const sent = await sendMessages(smtpPort, 40, { concurrency: 4 });
      for (const message of sent) assert.match(message.reply, /^250 /, `message ${message.index}`);
      const newSpace = await metric(httpPort, 'nodejs_heap_space_size_total_bytes', { space: 'new' });
      assert.ok(newSpace !== undefined && newSpace > 0, 'GET /metrics has nodejs_heap_space_size_total_bytes{space="new"}');
      assert.ok(newSpace <= NEW_SPACE_MAX, `new space ${newSpace} bytes, at most ${NEW_SPACE_MAX}`);
    });
  });
});
