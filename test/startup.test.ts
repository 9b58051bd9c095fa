import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ENTRY, ROOT } from './support/processes.ts';
import { tempDir } from './support/util.ts';

/** What an administrator sees when the configuration is wrong: one line naming the key, exit 78. */
function run(entry: keyof typeof ENTRY, env: Record<string, string>, as: { uid?: number; gid?: number } = {}) {
  const result = spawnSync(process.execPath, [join(ROOT, ENTRY[entry])], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 120_000, ...as });
  return { code: result.status, stderr: result.stderr, stdout: result.stdout };
}

/** As run(), without blocking this process's event loop (a server of the test must answer meanwhile). */
function runAsync(entry: keyof typeof ENTRY, env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(ROOT, ENTRY[entry])], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('exit', (code) => resolve({ code, stderr }));
  });
}

describe('start-up errors', () => {
  const good = { RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:2526', SMTP_PORT: '0', HTTP_PORT: '0' };

  for (const service of ['ingress', 'spool', 'health', 'deliverer'] as const) {
    it(`${service} alone without AMQP_URL exits with one line saying it needs a broker`, () => {
      const dir = tempDir();
      try {
        const { code, stderr, stdout } = run(service, { ...good, DATA_DIR: dir.path });
        assert.equal(code, 78);
        assert.equal(stderr, `backupmx ${service}: configuration: AMQP_URL is required to run this service on its own (or run every service in one process with "npm start")\n`);
        assert.equal(stdout, '');
      } finally {
        dir.remove();
      }
    });
  }

  const bad: Array<[string, Record<string, string>, RegExp]> = [
    ['RELAY_DOMAINS missing', { PRIMARY: '127.0.0.1:2526' }, /^backupmx all: configuration: RELAY_DOMAINS: is required\n$/],
    ['PRIMARY missing', { RELAY_DOMAINS: 'example.test' }, /^backupmx all: configuration: PRIMARY: is required\n$/],
    ['SMTP_PORT not a number', { ...good, SMTP_PORT: 'twenty-five' }, /^backupmx all: configuration: SMTP_PORT: expected a whole number from 0 to 65535\n$/],
    ['QUEUE_LIFETIME not a duration', { ...good, QUEUE_LIFETIME: 'a while' }, /^backupmx all: configuration: QUEUE_LIFETIME: expected a duration such as 30s, 5m, 1h or 5d\n$/],
    ['AMQP_URL of the wrong scheme', { ...good, AMQP_URL: 'http://127.0.0.1:5672' }, /^backupmx all: configuration: AMQP_URL: expected amqp:\/\/host:port\/vhost \(the user and password may go in AMQP_USER and AMQP_PASSWORD, taken literally\)\n$/],
    ['a config file that does not exist', { ...good, BACKUPMX_CONFIG: '/nonexistent/backupmx.yml' }, /^backupmx all: configuration: BACKUPMX_CONFIG: cannot read \/nonexistent\/backupmx.yml: .*\n$/],
  ];
  for (const [what, env, expected] of bad) {
    it(`npm start with ${what} exits 78 with one line naming the key`, () => {
      const { code, stderr } = run('all', env);
      assert.equal(code, 78);
      assert.match(stderr, expected);
    });
  }

  it('npm start with SMTP_PORT already taken exits 78 with one line naming SMTP_PORT', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', () => resolve()));
    const port = (taken.address() as AddressInfo).port;
    const dir = tempDir();
    try {
      const { code, stderr } = await runAsync('all', { ...good, SMTP_HOST: '127.0.0.1', SMTP_PORT: String(port), DATA_DIR: dir.path });
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: SMTP_PORT: 127.0.0.1:${port} is already in use\n`);
    } finally {
      taken.close();
      dir.remove();
    }
  });

  // DATA_DIR (issue 13): what `docker run -v ./spool:/app/data` with a folder the node user cannot
  // write gave: SQLite's "unable to open database file" and a stack trace.
  it('npm start with a DATA_DIR this user cannot write exits 78 with one line naming DATA_DIR, its owner and mode', () => {
    const dir = tempDir();
    try {
      const data = join(dir.path, 'spool');
      chmodSync(dir.path, 0o755);
      mkdirSync(data, { mode: 0o755 });
      chmodSync(data, 0o755);
      // As root every directory is writable: run as nobody, as the image runs as node (uid 1000).
      const root = process.getuid?.() === 0;
      if (!root) chmodSync(data, 0o555);
      const uid = root ? 65534 : (process.getuid?.() ?? 0);
      const { code, stderr } = run('all', { ...good, DATA_DIR: data }, root ? { uid: 65534, gid: 65534 } : {});
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: DATA_DIR: ${data} is not writable: permission denied (running as uid ${uid}; it belongs to uid ${root ? 0 : uid}, mode ${root ? '0755' : '0555'})\n`);
    } finally {
      dir.remove();
    }
  });

  it('npm start with a DATA_DIR that is a file exits 78 with one line naming DATA_DIR', () => {
    const dir = tempDir();
    try {
      const data = join(dir.path, 'spool');
      writeFileSync(data, 'not a directory');
      const { code, stderr } = run('all', { ...good, DATA_DIR: data });
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: DATA_DIR: ${data} is not a directory\n`);
    } finally {
      dir.remove();
    }
  });

  // Defect 4: a spool and deliverers in separate containers, each on its own default ./data, would
  // each have a private SQLite file: deliverers that never see the spool's mail.
  for (const service of ['spool', 'deliverer'] as const) {
    it(`${service} alone on SQLite without DATA_DIR exits 78 with one line saying every spool and deliverer must share it`, () => {
      const { code, stderr } = run(service, { ...good, AMQP_URL: 'amqp://127.0.0.1:1/' });
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx ${service}: configuration: DATA_DIR is required to run this service on its own with the SQLite store (every spool and deliverer must share it), or set MONGODB_URL\n`);
    });
  }
});

