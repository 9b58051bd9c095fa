import assert from 'node:assert/strict';
import { appendFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { createLogger } from '../shared/src/runtime/logger.ts';
import { createMemoryBroker } from '../shared/src/broker/memory-broker.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import type { Store } from '../shared/src/store/store.ts';
import { startIngress, type Ingress } from '../services/ingress/src/ingress.ts';
import { startSpool } from '../services/spool/src/spool.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { startPrimary } from './support/primary.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));

/** RCPT replies for these recipients in one transaction. */
async function rcpt(port: number, recipients: string[]): Promise<string[]> {
  const smtp = await openSession(port);
  assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
  assert.match(await smtp.command('MAIL FROM:<sender@origin.test>'), /^250 /);
  const replies: string[] = [];
  for (const recipient of recipients) replies.push(await smtp.command(`RCPT TO:<${recipient}>`));
  smtp.close();
  return replies;
}

describe('ingress: static recipient lists', () => {
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  let dir: ReturnType<typeof tempDir>;
  let listFile: string;
  before(async () => {
    dir = tempDir();
    listFile = join(dir.path, 'other.test.txt');
    writeFileSync(listFile, '# valid users of other.test\nalice@other.test\nBob@Other.Test  OK\n\n@all.test\n');
    const configFile = join(dir.path, 'backupmx.yaml');
    writeFileSync(
      configFile,
      [
        'domains:',
        '  example.test:',
        '    RECIPIENTS: [known@example.test, Mixed.Case@example.test]',
        '  other.test:',
        `    RECIPIENTS_FILE: ${listFile}`,
        '  all.test:',
        `    RECIPIENTS_FILE: ${listFile}`,
      ].join('\n'),
    );
    system = await startIngressWithSpool({ BACKUPMX_CONFIG: configFile, RELAY_DOMAINS: 'example.test,other.test,all.test,open.test', GREETING_DELAY: '0' }, { ingress: { resolver } });
  });
  after(async () => {
    await system.close();
    dir.remove();
  });

  it('takes listed recipients (any case) and refuses others with 550 5.1.1', async () => {
    const replies = await rcpt(system.port, ['known@example.test', 'KNOWN@Example.Test', 'mixed.case@EXAMPLE.TEST', 'unknown@example.test', 'alice@other.test', 'bob@other.test', 'eve@other.test']);
    assert.deepEqual(
      replies.map((reply) => reply.slice(0, 9)),
      ['250 2.1.5', '250 2.1.5', '250 2.1.5', '550 5.1.1', '250 2.1.5', '250 2.1.5', '550 5.1.1'],
    );
    assert.equal(replies[3], '550 5.1.1 <unknown@example.test>: Recipient address rejected: User unknown in relay recipient table');
  });

  it('takes every address of a domain listed as @domain', async () => {
    assert.match((await rcpt(system.port, ['anyone@all.test']))[0] ?? '', /^250 /);
  });

  it('accepts every recipient of a domain without a list (and refuses relaying as before)', async () => {
    const replies = await rcpt(system.port, ['whoever@open.test', 'user@elsewhere.test']);
    assert.match(replies[0] ?? '', /^250 /);
    assert.match(replies[1] ?? '', /^550 5\.7\.1 /);
  });

  it('re-reads the file when it changes', async () => {
    assert.match((await rcpt(system.port, ['carol@other.test']))[0] ?? '', /^550 5\.1\.1 /);
    appendFileSync(listFile, 'carol@other.test\n');
    await waitFor('carol to be accepted', async () => /^250 /.test((await rcpt(system.port, ['carol@other.test']))[0] ?? ''));
    assert.match((await rcpt(system.port, ['eve@other.test']))[0] ?? '', /^550 5\.1\.1 /);
  });

  it('refuses a message to an unknown user and stores nothing', async () => {
    const smtp = await openSession(system.port);
    await smtp.command('EHLO client.origin.test');
    await smtp.command('MAIL FROM:<sender@origin.test>');
    assert.match(await smtp.command('RCPT TO:<nobody@example.test>'), /^550 5\.1\.1 /);
    assert.match(await smtp.command('DATA'), /^503 /);
    smtp.close();
    assert.equal((await system.store.stats()).messages, 0);
  });
});

/** A TCP server that accepts connections and never says anything (a hung primary). */
async function startSilentServer(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('ingress: recipient verification by callout', () => {
  const dir = tempDir();
  const storePath = join(dir.path, 'spool.sqlite');
  const log = createLogger('test', 'silent');
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  let primaryPort: number;
  let silent: Awaited<ReturnType<typeof startSilentServer>>;
  let running: { port: number; store: Store; broker: ReturnType<typeof createMemoryBroker>; ingress: Ingress } | null = null;

  /** Ingress and spool on the store under `dir`, as a (re)started single process would have them. */
  async function start(): Promise<NonNullable<typeof running>> {
    const port = await freePort();
    const configFile = join(dir.path, 'backupmx.yaml');
    writeFileSync(
      configFile,
      [
        'domains:',
        '  verify.test:',
        `    PRIMARY: 127.0.0.1:${primaryPort}`,
        '    VERIFY_RECIPIENTS: true',
        '  defer.test:',
        `    PRIMARY: 127.0.0.1:${primaryPort}`,
        '    VERIFY_RECIPIENTS: true',
        '    VERIFY_WHEN_DOWN: defer',
        '  hung.test:',
        `    PRIMARY: 127.0.0.1:${silent.port}`,
        '    VERIFY_RECIPIENTS: true',
        '    VERIFY_WHEN_DOWN: defer',
      ].join('\n'),
    );
    const config = loadConfig({
      BACKUPMX_CONFIG: configFile,
      RELAY_DOMAINS: 'verify.test,defer.test,hung.test',
      PRIMARY: '127.0.0.1:1',
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(port),
      SMTP_HOSTNAME: 'backup.example.test',
      DATA_DIR: dir.path,
      GREETING_DELAY: '0',
      VERIFY_TIMEOUT: '500ms',
    });
    const store = await openSqliteStore(storePath);
    const broker = createMemoryBroker(join(dir.path, 'dead'), log);
    await startSpool(config, store, broker, log);
    const ingress = await startIngress(config, broker, log, { store, resolver });
    running = { port, store, broker, ingress };
    return running;
  }
  async function stop(): Promise<void> {
    if (!running) return;
    await running.ingress.stop();
    await running.broker.close();
    await running.store.close();
    running = null;
  }
  /** What the health service would say about the primary. */
  async function healthSays(state: 'up' | 'down'): Promise<void> {
    const system = running;
    assert.ok(system);
    system.broker.publishEvent(state === 'up' ? 'primary.up' : 'primary.down', { target: `127.0.0.1:${primaryPort}`, state, since: Date.now() });
    await new Promise((resolve) => setImmediate(resolve));
  }

  before(async () => {
    primary = await startPrimary({ reject: { 'nobody@verify.test': 550, 'nobody@defer.test': 550, 'busy@verify.test': 450 } });
    primaryPort = primary.port;
    silent = await startSilentServer();
  });
  after(async () => {
    await stop();
    await primary.close();
    await silent.close();
    dir.remove();
  });

  it('asks the primary: 250 for a recipient it takes, 550 5.1.1 for one it refuses, and sends no message', async () => {
    const system = await start();
    const replies = await rcpt(system.port, ['known@verify.test', 'nobody@verify.test', 'Known@Verify.Test']);
    assert.match(replies[0] ?? '', /^250 2\.1\.5 /);
    assert.equal(replies[1], '550 5.1.1 <nobody@verify.test>: Recipient address rejected: User unknown');
    assert.match(replies[2] ?? '', /^250 2\.1\.5 /);
    assert.equal(primary.messages.length, 0, 'a callout must not deliver anything');
  });

  it('caches positive answers for 30 days and negative ones for 1 hour, in the store', async () => {
    const store = running?.store;
    assert.ok(store);
    const now = Date.now();
    const day = 86_400_000;
    assert.equal(await store.cacheGet('verify:known@verify.test', now), 'valid');
    assert.equal(await store.cacheGet('verify:known@verify.test', now + 29 * day), 'valid');
    assert.equal(await store.cacheGet('verify:known@verify.test', now + 31 * day), null);
    assert.equal(await store.cacheGet('verify:nobody@verify.test', now + 59 * 60_000), 'invalid');
    assert.equal(await store.cacheGet('verify:nobody@verify.test', now + 61 * 60_000), null);
  });

  it('does not cache a temporary answer of the primary, and applies the domain policy to it', async () => {
    const system = running;
    assert.ok(system);
    assert.match((await rcpt(system.port, ['busy@verify.test']))[0] ?? '', /^250 /, 'policy accept');
    assert.equal(await system.store.cacheGet('verify:busy@verify.test', Date.now()), null);
  });

  it('keeps the cache across a restart and through a primary outage; the policy decides for unknown recipients', async () => {
    assert.match((await rcpt(running?.port ?? 0, ['known@defer.test']))[0] ?? '', /^250 /);
    await stop();
    await primary.close();
    const system = await start();
    await healthSays('down');
    const replies = await rcpt(system.port, ['known@verify.test', 'nobody@verify.test', 'known@defer.test', 'new@verify.test', 'new@defer.test']);
    assert.match(replies[0] ?? '', /^250 2\.1\.5 /, 'cached positive answer');
    assert.match(replies[1] ?? '', /^550 5\.1\.1 /, 'cached negative answer');
    assert.match(replies[2] ?? '', /^250 2\.1\.5 /, 'cached positive answer');
    assert.match(replies[3] ?? '', /^250 2\.1\.5 /, 'unknown recipient, policy accept (the default)');
    assert.equal(replies[4], '450 4.2.0 <new@defer.test>: Recipient address rejected: the primary mail server cannot verify it now, try again later');
    assert.equal(await system.store.cacheGet('verify:new@verify.test', Date.now()), null, 'an unverified recipient is not cached');
  });

  it('treats a primary that refuses the callout connection as down, without news from the health service', async () => {
    const system = running;
    assert.ok(system);
    await healthSays('up'); // stale news: the primary is in fact gone
    const replies = await rcpt(system.port, ['other@defer.test', 'other@verify.test']);
    assert.match(replies[0] ?? '', /^450 4\.2\.0 /);
    assert.match(replies[1] ?? '', /^250 2\.1\.5 /);
  });

  it('gives up on a primary that does not answer within VERIFY_TIMEOUT and applies the policy', async () => {
    const system = running;
    assert.ok(system);
    // The silent server accepts the connection and never greets: the callout must not hang the session.
    const replies = await rcpt(system.port, ['someone@hung.test', 'someone.else@hung.test']);
    assert.match(replies[0] ?? '', /^450 4\.2\.0 /);
    assert.match(replies[1] ?? '', /^450 4\.2\.0 /);
  });

  it('verifies again once the primary is back', async () => {
    primary = await startPrimary({ port: primaryPort, reject: { 'nobody@defer.test': 550 } });
    await healthSays('up');
    const system = running;
    assert.ok(system);
    const replies = await rcpt(system.port, ['new@defer.test', 'nobody@defer.test']);
    assert.match(replies[0] ?? '', /^250 2\.1\.5 /);
    assert.match(replies[1] ?? '', /^550 5\.1\.1 /);
    assert.equal(await system.store.cacheGet('verify:new@defer.test', Date.now()), 'valid');
  });
});
