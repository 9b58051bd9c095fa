import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { SMTPServer } from 'smtp-server';
import { groupCommit } from '../shared/src/store/group-commit.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { assertAllDelivered, queueIdOf, sendMessages } from './support/mail.ts';
import type { Received } from './support/primary.ts';
import { spawnModule, spawnService, waitReady, type Service } from './support/processes.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * Issue 9: the SQLite store commits the writes of one event-loop turn together (group commit) and
 * lets a settle wait a few milliseconds for company. What a sender and an operator rely on does
 * not move: no 250 before the write is durable, nothing that got a 250 is lost when the process is
 * killed mid-batch, and a crash between the primary's 250 and the settle only ever re-sends what
 * the primary had already taken (DESIGN.md guarantee 4). The store commits with synchronous=NORMAL
 * and syncs the WAL off the event loop: a write is answered only after a sync that started after
 * its commit, and a sync that fails answers 4xx to every write it covered.
 */

/**
 * Another connection takes SQLite's write lock (BEGIN IMMEDIATE) and keeps it until release(). A
 * module file of its own (spawnModule), the database named in its environment: under Deno a
 * `-e` script's argv is not Node's, and the lock was taken on another file.
 */
async function holdWriteLock(path: string, dir: string): Promise<{ release: () => Promise<void> }> {
  const source = `
    import { DatabaseSync } from 'node:sqlite';
    const db = new DatabaseSync(process.env.LOCK_DATABASE);
    db.exec('BEGIN IMMEDIATE');
    process.stdout.write('locked\\n');
    process.stdin.once('data', () => { db.exec('ROLLBACK'); db.close(); process.stdout.write('released\\n'); process.exit(0); });`;
  const child: ChildProcess = spawnModule(source, dir, { stdio: ['pipe', 'pipe', 'inherit'], env: { ...process.env, LOCK_DATABASE: path } });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await waitFor('the lock holder to take the write lock', () => output.includes('locked'), 20_000, 10);
  return {
    release: async () => {
      child.stdin?.write('go\n');
      await waitFor('the lock holder to let go', () => output.includes('released'), 20_000, 2);
    },
  };
}

/**
 * A sync the test lets finish: each call waits until the test releases or fails it; after
 * `releaseAll()` every call, past and future, completes at once.
 */
function heldSync() {
  const calls: { release: () => void; fail: (error: Error) => void }[] = [];
  let free = false;
  return {
    calls,
    sync: () =>
      new Promise<void>((resolve, reject) => {
        if (free) return resolve();
        calls.push({ release: resolve, fail: reject });
      }),
    releaseAll() {
      free = true;
      for (const call of calls) call.release();
    },
  };
}

/** An fdatasync that met a disk error. */
function ioError(): Error {
  return Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' });
}

function countMessages(path: string): number {
  const reader = new DatabaseSync(path, { readOnly: true });
  try {
    return (reader.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n;
  } finally {
    reader.close();
  }
}

async function startRunning(dir: string, name: string, ports: { smtp: number; primary: number }): Promise<Service> {
  const httpPort = await freePort();
  const service = spawnService(name, 'all', {
    RELAY_DOMAINS: 'example.test',
    PRIMARY: `127.0.0.1:${ports.primary}`,
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(ports.smtp),
    SMTP_HOSTNAME: 'backup.example.test',
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: String(httpPort),
    DATA_DIR: join(dir, 'data'),
    PROBE_INTERVAL: '500ms',
    PROBE_TIMEOUT: '1s',
  }, join(dir, 'logs'));
  await waitReady(service);
  return service;
}

/**
 * One message on a session of its own, up to DATA's 354; `finish()` sends the message and its final
 * dot and resolves with the reply. (node:sqlite waits for a held lock synchronously, which stalls the
 * whole process: the sessions are opened before the lock is taken.)
 */
async function openUpToData(port: number, index: number): Promise<{ finish: () => Promise<string> }> {
  const session = await openSession(port);
  assert.match(session.greeting, /^220 /);
  assert.match(await session.command('EHLO client.origin.test'), /^250 /);
  assert.match(await session.command(`MAIL FROM:<sender${index}@origin.test>`), /^250 /);
  assert.match(await session.command(`RCPT TO:<user${index % 5}@example.test>`), /^250 /);
  assert.match(await session.command('DATA'), /^354 /);
  const body = `From: <sender${index}@origin.test>\r\nTo: <user${index % 5}@example.test>\r\nSubject: batch ${index}\r\nMessage-ID: <batch${index}@origin.test>\r\n\r\nmessage ${index}\r\n.\r\n`;
  return { finish: () => session.data(body).finally(() => session.close()) };
}

describe('group commit: no 250 before the write is durable', () => {
  const dir = tempDir();
  let system: Service | null = null;
  after(async () => {
    await system?.stop('SIGKILL');
    dir.remove();
  });

  it('sessions whose messages wait behind a held commit get no reply until it is committed, then all get 250 and all are stored', { timeout: 150_000 }, async () => {
    const ports = { smtp: await freePort(), primary: await freePort() };
    system = await startRunning(dir.path, 'all', ports);
    const path = join(dir.path, 'data', 'spool.sqlite');
    const sessions = await Promise.all(Array.from({ length: 5 }, (_, i) => openUpToData(ports.smtp, i)));
    const lock = await holdWriteLock(path, dir.path);
    const replies: (string | null)[] = Array.from({ length: 5 }, () => null);
    let pending: Promise<string>[];
    try {
      pending = sessions.map((session, i) => session.finish().then((reply) => (replies[i] = reply)));
      // Every dot is written; give the server time to read them and to try its commit.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.deepEqual(replies, [null, null, null, null, null], 'a reply came while the write could not be committed');
      // A reader does not wait for the writer (WAL): what is committed shows, and nothing is.
      const reader = new DatabaseSync(path, { readOnly: true });
      try {
        assert.equal((reader.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n, 0, 'nothing is in the store before the commit');
      } finally {
        reader.close();
      }
    } finally {
      await lock.release();
    }
    const answered = await Promise.all(pending);
    const ids = answered.map((reply) => {
      assert.match(reply, /^250 2\.0\.0 Ok: queued as [0-9A-Z]+$/);
      return /queued as ([0-9A-Z]+)/.exec(reply)?.[1] as string;
    });
    const store = await openSqliteStore(path);
    try {
      for (const id of ids) assert.ok(await store.getMessage(id), `message ${id} got 250 and is in the store`);
    } finally {
      await store.close();
    }
  });
});

describe('group commit: a write is answered only after its sync', () => {
  const dir = tempDir();
  after(() => dir.remove());

  function table(name: string): DatabaseSync {
    const db = new DatabaseSync(join(dir.path, name));
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = NORMAL');
    db.exec('CREATE TABLE t (n INTEGER)');
    return db;
  }

  it('resolves a write once a sync that started after its COMMIT has completed; the commits made meanwhile share the next sync', async () => {
    const db = table('held.sqlite');
    const held = heldSync();
    const group = groupCommit(db, { sync: held.sync });
    const insert = db.prepare('INSERT INTO t VALUES (?)');
    const answered: number[] = [];
    const write = (n: number) => group.write(() => insert.run(n)).then(() => void answered.push(n));
    const first = write(1);
    await sleep(50);
    assert.equal(held.calls.length, 1, 'the first commit started a sync');
    const later = [write(2), write(3)];
    await sleep(50);
    assert.equal((db.prepare('SELECT COUNT(*) AS n FROM t').get() as { n: number }).n, 3, 'all three are committed');
    assert.deepEqual(answered, [], 'nothing is answered before its sync');
    assert.equal(held.calls.length, 1, 'one sync at a time');
    held.calls[0]?.release();
    await first;
    await sleep(50);
    assert.deepEqual(answered, [1], 'the first sync answers only what was committed before it started');
    assert.equal(held.calls.length, 2, 'the writes committed during the first sync get a sync of their own');
    held.calls[1]?.release();
    await Promise.all(later);
    assert.deepEqual(answered, [1, 2, 3]);
    await group.close();
    db.close();
  });

  it('a failed sync rejects every write it covered and those committed while it ran, and refuses every write after it', async () => {
    const db = table('failing.sqlite');
    const held = heldSync();
    const group = groupCommit(db, { sync: held.sync });
    const insert = db.prepare('INSERT INTO t VALUES (?)');
    const covered = group.write(() => insert.run(1));
    await sleep(50);
    const meanwhile = group.write(() => insert.run(2));
    await sleep(50);
    held.calls[0]?.fail(ioError());
    await assert.rejects(covered, /EIO/);
    await assert.rejects(meanwhile, /a sync of its WAL failed earlier/);
    assert.match(String(group.failed), /EIO/);
    await assert.rejects(group.write(() => insert.run(3)), /a sync of its WAL failed earlier/);
    await assert.rejects(group.synced(), /a sync of its WAL failed earlier/);
    assert.equal(held.calls.length, 1, 'nothing is synced after the failure');
    await group.close();
    db.close();
  });

  it('the store refuses to acknowledge once its -wal file is removed under it, and reports not ready', async () => {
    const path = join(dir.path, 'removed.sqlite');
    const store = await openSqliteStore(path);
    const mail = (id: string) => ({ id, envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] }, body: Buffer.from(`Subject: ${id}\r\n\r\nbody\r\n`), receivedAt: Date.now() });
    const routes = { 'u@example.test': 'primary' };
    try {
      assert.equal(await store.put(mail('WAL00001'), routes), true);
      rmSync(`${path}-wal`);
      await assert.rejects(store.put(mail('WAL00002'), routes), /removed or replaced/);
      assert.equal(store.ready(), false);
      await assert.rejects(store.put(mail('WAL00003'), routes), /a sync of its WAL failed earlier/);
    } finally {
      await store.close();
    }
  });

  it('puts that arrive a millisecond apart, as the sessions of a busy ingress finish their DATA, share commits and syncs; each is answered after the sync that covers it', async () => {
    const path = join(dir.path, 'apart.sqlite');
    let syncs = 0;
    const store = await openSqliteStore(path, { sync: async () => void (syncs += 1) });
    const mail = (id: string) => ({ id, envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] }, body: Buffer.from(`Subject: ${id}\r\n\r\nbody\r\n`), receivedAt: Date.now() });
    const routes = { 'u@example.test': 'primary' };
    try {
      const puts: Promise<boolean>[] = [];
      for (let i = 0; i < 20; i++) {
        puts.push(store.put(mail(`APART${String(i).padStart(3, '0')}`), routes));
        await sleep(1);
      }
      assert.deepEqual(await Promise.all(puts), Array(20).fill(true));
      assert.equal((await store.stats()).messages, 20);
      // One commit and sync per put would be 20 (each put alone in its event-loop turn).
      assert.ok(syncs <= 10, `20 puts a millisecond apart took ${syncs} syncs`);
    } finally {
      await store.close();
    }
  });
});

describe('group commit: the SMTP reply waits for the sync of the WAL', () => {
  it('no 250 while the sync that covers the message is held back, although the message is committed; 250 once it completes', { timeout: 60_000 }, async () => {
    const held = heldSync();
    const system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test' }, { storeSync: held.sync });
    try {
      const session = await openUpToData(system.port, 1);
      let reply: string | null = null;
      const pending = session.finish().then((text) => (reply = text));
      await waitFor('the message to be committed', () => countMessages(join(system.dataDir, 'spool.sqlite')) === 1, 20_000, 10);
      await sleep(1000);
      assert.equal(reply, null, 'a reply came before the sync completed');
      assert.ok(held.calls.length >= 1, 'a sync is waiting');
      held.releaseAll();
      const id = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)$/.exec(await pending)?.[1];
      assert.ok(id, `250 after the sync, got ${String(reply)}`);
      assert.ok(await system.store.getMessage(id), 'the message that got 250 is in the store');
    } finally {
      held.releaseAll();
      await system.close();
    }
  });

  it('a sync that fails answers 451 4.3.0 to every message it covered and the store reports not ready', { timeout: 60_000 }, async () => {
    const held = heldSync();
    const system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test' }, { storeSync: held.sync });
    try {
      const sessions = await Promise.all(Array.from({ length: 3 }, (_, i) => openUpToData(system.port, i)));
      const pending = sessions.map((session) => session.finish());
      await waitFor('the messages to be committed', () => countMessages(join(system.dataDir, 'spool.sqlite')) === 3, 20_000, 10);
      for (const call of held.calls) call.fail(ioError());
      for (const reply of await Promise.all(pending)) {
        assert.equal(reply, '451 4.3.0 Temporary failure: message not queued, try again later');
      }
      assert.equal(system.store.ready(), false, 'the store says it cannot take writes');
    } finally {
      await system.close();
    }
  });
});

describe('group commit: SIGKILL between the batch\'s write and its replies', () => {
  const dir = tempDir();
  let system: Service | null = null;
  after(async () => {
    await system?.stop('SIGKILL');
    dir.remove();
  });

  it('loses nothing that got a 250', { timeout: 150_000 }, async () => {
    const ports = { smtp: await freePort(), primary: await freePort() };
    system = await startRunning(dir.path, 'all', ports);
    const path = join(dir.path, 'data', 'spool.sqlite');
    // A batch piles up behind a held lock; the moment it is let go the server commits and replies,
    // and is killed in the middle of that.
    const sessions = await Promise.all(Array.from({ length: 12 }, (_, i) => openUpToData(ports.smtp, i)));
    const lock = await holdWriteLock(path, dir.path);
    const results = sessions.map((session) => session.finish().catch((error: unknown) => String(error)));
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const killed = system;
    await lock.release();
    killed.child.kill('SIGKILL');
    await killed.exited;
    system = null;
    const replies = await Promise.all(results);
    const accepted = replies.flatMap((reply) => /^250 .*queued as ([0-9A-Z]+)$/.exec(reply)?.[1] ?? []);
    const store = await openSqliteStore(path);
    try {
      for (const id of accepted) assert.ok(await store.getMessage(id), `message ${id} got 250 before the kill and is in the store after it`);
      // Without a 250 the sender still has the message; storing it as well is allowed (it comes twice).
      const stored = (await store.stats()).messages;
      assert.ok(stored >= accepted.length, `${stored} stored, ${accepted.length} answered 250`);
    } finally {
      await store.close();
    }
    // The others were cut off without a reply (the sender retries), never refused.
    for (const reply of replies) assert.ok(/^250 /.test(reply) || reply === '(connection closed)', `unexpected reply: ${reply}`);
  });
});

describe('batched settles: SIGKILL between the primary\'s 250 and the settle', () => {
  const dir = tempDir();
  let system: Service | null = null;
  let primary: SMTPServer | null = null;
  after(async () => {
    await system?.stop('SIGKILL');
    await new Promise<void>((resolve) => (primary ? primary.close(() => resolve()) : resolve()));
    dir.remove();
  });

  it('delivers everything after a restart, and re-sends only what the primary had taken from the killed process', { timeout: 150_000 }, async () => {
    const ports = { smtp: await freePort(), primary: await freePort() };
    system = await startRunning(dir.path, 'all', ports);
    const sent = await sendMessages(ports.smtp, 40, { concurrency: 5 });
    assert.ok(sent.every((message) => message.id), 'every message was accepted');

    // The primary comes back and kills the backup MX right after its 20th 250.
    const received: Received[] = [];
    let killedAfter: number | null = null;
    const victim = system;
    primary = new SMTPServer({
      disabledCommands: ['AUTH', 'STARTTLS'],
      logger: false,
      closeTimeout: 500,
      onData(stream, session, callback) {
        const chunks: Buffer[] = [];
        stream.on('data', (chunk: Buffer) => chunks.push(chunk));
        stream.on('end', () => {
          received.push({ from: session.envelope.mailFrom ? session.envelope.mailFrom.address : '', to: session.envelope.rcptTo.map((r) => r.address), raw: Buffer.concat(chunks) });
          callback();
          if (received.length === 20 && killedAfter === null) {
            killedAfter = received.length;
            victim.child.kill('SIGKILL');
          }
        });
      },
    });
    primary.on('error', () => {});
    await new Promise<void>((resolve) => primary?.listen(ports.primary, '127.0.0.1', () => resolve()));
    await victim.exited;
    system = null;
    assert.equal(killedAfter, 20);
    // What the first process had handed over whole (its final dot sent) before it died; the
    // primary may read the last of those just after the kill.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const beforeKill = new Set(received.map((message) => queueIdOf(message)));
    assert.ok(beforeKill.size < sent.length, 'the kill came in the middle of the flush');

    system = await startRunning(dir.path, 'all-2', ports);
    await waitFor('every accepted message at the primary', () => new Set(received.map((message) => queueIdOf(message))).size >= sent.length, 60_000);
    assertAllDelivered(sent, received);
    const seen = new Map<string, number>();
    for (const message of received) {
      const id = queueIdOf(message) as string;
      seen.set(id, (seen.get(id) ?? 0) + 1);
    }
    for (const [id, copies] of seen) {
      if (copies > 1) assert.ok(beforeKill.has(id), `${id} came ${copies} times, but the first process had not handed it over before the kill`);
      assert.ok(copies <= 2, `${id} came ${copies} times`);
    }
  });
});
