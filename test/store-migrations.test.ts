/**
 * Upgrades keep the queue (issue 13, defect 9): a spool written by an earlier build (made here by
 * hand in that build's format, test/support/store-formats.ts) is migrated forward when backupmx
 * starts, and its queued mail reaches the primary; a file from a newer build, or one that is no
 * backupmx store, is refused with one line and left alone; a migration that fails changes nothing.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { describe, it } from 'node:test';
import { startPrimary, type Received } from './support/primary.ts';
import { ENTRY, ROOT, spawnService, waitReady } from './support/processes.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { writeSqliteV1, writeSqliteV2, writeSqliteV3, type OldMessage } from './support/store-formats.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

const HOUR = 3_600_000;

function body(id: string): Buffer {
  return Buffer.from(
    `Received: from client.origin.test ([192.0.2.7])\r\n\tby backup.example.test (backupmx) with ESMTP id ${id}\r\n\tfor <x@example.test>; Tue, 1 Dec 2026 10:00:00 +0000\r\n` +
      `From: <sender@origin.test>\r\nSubject: queued before the upgrade ${id}\r\n\r\ncaf\u00e9 body of ${id}\r\n.leading dot\r\n`,
    'utf8',
  );
}

/** What the primary got, per message (by the id in the Subject): envelope recipients and bytes. */
function arrivals(messages: Received[]): Map<string, { to: string[]; raw: Buffer }[]> {
  const byId = new Map<string, { to: string[]; raw: Buffer }[]>();
  for (const m of messages) {
    const id = /queued before the upgrade (\w+)/.exec(m.raw.toString('utf8'))?.[1] ?? '?';
    byId.set(id, [...(byId.get(id) ?? []), { to: m.to, raw: m.raw }]);
  }
  return byId;
}

async function queueEntry(httpPort: number, id: string) {
  const response = await fetch(`http://127.0.0.1:${httpPort}/api/queue/${id}`);
  assert.equal(response.status, 200, `GET /api/queue/${id}`);
  return (await response.json()) as { deliveries: { recipient: string; state: string; lastReply: string | null }[]; attempts: { recipient: string; result: string }[] };
}

/**
 * Start `npm start` on a DATA_DIR holding `write`'s file, wait for `expected` (queue id -> the
 * recipients that must arrive), then check every arrival and return the API's view and the log.
 */
async function upgradeAndDeliver(write: (path: string, route: string) => OldMessage[], expected: Record<string, string[]>) {
  const primary = await startPrimary();
  const dir = tempDir();
  const route = `127.0.0.1:${primary.port}`;
  const stored = write(join(dir.path, 'data', 'spool.sqlite'), route);
  const env = {
    RELAY_DOMAINS: 'example.test',
    PRIMARY: route,
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(await freePort()),
    HTTP_HOST: '127.0.0.1',
    HTTP_PORT: String(await freePort()),
    DATA_DIR: join(dir.path, 'data'),
    PROBE_INTERVAL: '1s',
    SMTP_HOSTNAME: 'backup.example.test',
  };
  const service = spawnService('all', 'all', env, join(dir.path, 'logs'));
  try {
    await waitReady(service);
    const want = Object.values(expected).flat().length;
    await waitFor(`${want} recipients at the primary`, () => primary.messages.flatMap((m) => m.to).length >= want, 30_000);
    await new Promise((resolve) => setTimeout(resolve, 1500)); // nothing more (held, failed, delivered) may follow
    const got = arrivals(primary.messages);
    assert.deepEqual([...got.keys()].sort(), Object.keys(expected).sort(), 'the messages that reach the primary');
    for (const [id, recipients] of Object.entries(expected)) {
      const copies = got.get(id) ?? [];
      assert.deepEqual(copies.flatMap((c) => c.to).sort(), [...recipients].sort(), `${id}: each queued recipient once`);
      const original = stored.find((m) => m.id === id)?.body ?? Buffer.alloc(0);
      for (const copy of copies) assert.ok(copy.raw.equals(original), `${id}: the stored bytes, unchanged`);
    }
    const views = Object.fromEntries(await Promise.all(stored.map(async (m) => [m.id, await queueEntry(service.httpPort, m.id)] as const)));
    assert.equal(await service.stop(), 0);
    const log = readFileSync(join(dir.path, 'logs', 'all.log'), 'utf8');
    const file = new DatabaseSync(join(dir.path, 'data', 'spool.sqlite'), { readOnly: true });
    const version = (file.prepare('PRAGMA user_version').get() as { user_version: number }).user_version;
    file.close();
    return { views, log, version };
  } finally {
    await service.stop('SIGKILL');
    await primary.close();
    dir.remove();
  }
}

/**
 * What a spool holds at upgrade time, in any format: A (two queued recipients, one tried and
 * deferred), B (one recipient delivered, one deferred; the null sender), C (a failed record); ids
 * prefixed by the format. Expected at the primary: A to both, B to b2.
 */
function queueAtUpgrade(prefix: string, route: string, now: number): OldMessage[] {
  const message = (id: string, offset: number, from: string, recipients: OldMessage['recipients']): OldMessage => ({ id: `${prefix}${id}`, from, receivedAt: now - HOUR + offset, body: body(`${prefix}${id}`), recipients });
  return [
    message('A', 0, 'sender@origin.test', [
      { address: 'a1@example.test', route, state: 'queued' },
      { address: 'a2@example.test', route, state: 'queued', attempts: 1, lastAttemptAt: now - 30 * 60_000, nextAttemptAt: now - 60_000, lastReply: '451 4.3.0 try later' },
    ]),
    message('B', 1, '', [
      { address: 'b1@example.test', route, state: 'delivered', attempts: 1, lastAttemptAt: now - 50 * 60_000, lastReply: '250 2.0.0 Ok' },
      { address: 'b2@example.test', route, state: 'queued', attempts: 1, lastAttemptAt: now - 50 * 60_000, nextAttemptAt: now - 1000, lastReply: '452 4.2.2 over quota' },
    ]),
    message('C', 2, 'sender@origin.test', [{ address: 'c1@example.test', route, state: 'failed', attempts: 1, lastAttemptAt: now - 40 * 60_000, lastReply: '550 5.1.1 no such user' }]),
  ];
}

describe('upgrades keep the queue (SQLite store)', () => {
  // Formats 3 and 2 hold the same kinds of mail (held included); each is brought to format 4 in one step.
  for (const { from, write, title, gains } of [
    { from: 3, write: writeSqliteV3, title: 'a spool in format 3 is brought to format 4 (deliveries carry received_at)', gains: 'one log line says so' },
    { from: 2, write: writeSqliteV2, title: 'a spool in format 2 (0.1.0) is brought to format 4', gains: 'format 2 gains the body_parts table and received_at, and one log line says so' },
  ]) {
    it(`${title} and its queued mail is delivered`, async () => {
      const now = Date.now();
      const prefix = `M${from}`;
      const { views, log, version } = await upgradeAndDeliver((path, route) => {
        const held: OldMessage = { id: `${prefix}D`, from: 'sender@origin.test', receivedAt: now - HOUR + 3, body: body(`${prefix}D`), recipients: [{ address: 'd1@example.test', route, state: 'held' }] };
        const messages = [...queueAtUpgrade(prefix, route, now), held];
        write(path, messages);
        return messages;
      }, { [`${prefix}A`]: ['a1@example.test', 'a2@example.test'], [`${prefix}B`]: ['b2@example.test'] });

      assert.equal(version, 4);
      const migrated = log.split('\n').filter((line) => line.includes('"msg":"store migrated to the current schema"'));
      assert.equal(migrated.length, 1, gains);
      assert.match(migrated[0] ?? '', new RegExp(`"from":${from},"to":4`));
      assert.deepEqual(views[`${prefix}A`]?.deliveries.map((d) => d.state), ['delivered', 'delivered']);
      assert.deepEqual(views[`${prefix}A`]?.attempts.map((a) => `${a.recipient} ${a.result}`), ['a2@example.test deferred', 'a1@example.test delivered', 'a2@example.test delivered'], 'the attempt history is kept');
      assert.deepEqual(views[`${prefix}B`]?.deliveries.map((d) => `${d.recipient} ${d.state}`), ['b1@example.test delivered', 'b2@example.test delivered']);
      assert.deepEqual(views[`${prefix}C`]?.deliveries.map((d) => `${d.state} ${d.lastReply}`), ['failed 550 5.1.1 no such user'], 'a failed record stays a record');
      assert.deepEqual(views[`${prefix}D`]?.deliveries.map((d) => d.state), ['held'], 'held mail stays held');
    });
  }

  it('after the migration from format 3, every queued delivery is claimable in the order the mail was received: by route, by flush, by the expiry sweep', async () => {
    const dir = tempDir();
    const path = join(dir.path, 'spool.sqlite');
    const now = Date.now();
    // Written neither in id nor in received order (oldest: Q3, Q1, Q5, Q2, Q4); Q1 has a recipient on each route.
    const message = (id: string, age: number, recipients: OldMessage['recipients']): OldMessage => ({ id, from: 'sender@origin.test', receivedAt: now - age * HOUR, body: body(id), recipients });
    const queued = (address: string, route = 'r1') => ({ address, route, state: 'queued' as const });
    const deferred = (address: string) => ({ address, route: 'r1', state: 'queued' as const, attempts: 1, lastAttemptAt: now - HOUR, nextAttemptAt: now + HOUR, lastReply: '451 4.3.0 later' });
    writeSqliteV3(path, [
      message('Q1', 4, [queued('a@example.test'), queued('a2@example.test', 'r2')]),
      message('Q2', 2, [deferred('b@example.test')]),
      message('Q3', 5, [queued('c@example.test')]),
      message('Q4', 1, [queued('d@example.test'), { address: 'd2@example.test', route: 'r1', state: 'delivered', attempts: 1, lastAttemptAt: now - HOUR, lastReply: '250 ok' }]),
      message('Q5', 3, [queued('e@example.test'), deferred('e2@example.test')]),
    ]);
    const store = await openSqliteStore(path);
    try {
      const claimed = async (options: Partial<Parameters<typeof store.claim>[0]>) =>
        (await store.claim({ now, leaseMs: 1000, owner: `o${Math.random()}`, limit: 10, ...options })).map((c) => `${c.message.id} ${c.route} ${c.deliveries.map((d) => d.recipient).join(',')}`);
      // Peeks (leases of one ms, each over when the next begins) in each of the claim's variants.
      assert.deepEqual(await claimed({ route: 'r1', now: now - 3, leaseMs: 1, limit: 2 }), ['Q3 r1 c@example.test', 'Q1 r1 a@example.test'], 'due on r1, oldest first, at most limit');
      assert.deepEqual(await claimed({ route: 'r1', now: now - 2, leaseMs: 1, ignoreSchedule: true, notAttemptedSince: now - 2 * HOUR }),
        ['Q3 r1 c@example.test', 'Q1 r1 a@example.test', 'Q5 r1 e@example.test', 'Q4 r1 d@example.test'], 'a flush: what was attempted since it began stays out');
      assert.deepEqual(await claimed({ now: now - 1, leaseMs: 1, receivedBefore: now - 2.5 * HOUR }),
        ['Q3 r1 c@example.test', 'Q1 r1 a@example.test', 'Q1 r2 a2@example.test', 'Q5 r1 e@example.test,e2@example.test'], 'the expiry sweep, any route, due or not');
      // And for real: everything queued, each once, in order.
      assert.deepEqual(await claimed({ route: 'r1', ignoreSchedule: true }), ['Q3 r1 c@example.test', 'Q1 r1 a@example.test', 'Q5 r1 e@example.test,e2@example.test', 'Q2 r1 b@example.test', 'Q4 r1 d@example.test']);
      assert.deepEqual(await claimed({ route: 'r2' }), ['Q1 r2 a2@example.test']);
      assert.deepEqual(await claimed({ ignoreSchedule: true }), [], 'all leased');
    } finally {
      await store.close();
    }
    const file = new DatabaseSync(path, { readOnly: true });
    assert.equal((file.prepare('PRAGMA user_version').get() as { user_version: number }).user_version, 4);
    const ages = file.prepare('SELECT d.message_id AS id, COUNT(*) AS n FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.received_at = m.received_at GROUP BY d.message_id ORDER BY d.message_id').all();
    assert.deepEqual(ages.map((r) => `${r['id']} ${r['n']}`), ['Q1 2', 'Q2 1', 'Q3 1', 'Q4 2', 'Q5 2'], 'every delivery has its message\'s received_at');
    file.close();
    dir.remove();
  });

  it('a spool in format 1 (pre-release builds) is migrated at start-up and its queued mail is delivered', async () => {
    const now = Date.now();
    const { views, log, version } = await upgradeAndDeliver((path, route) => {
      const messages = queueAtUpgrade('M1', route, now);
      writeSqliteV1(path, messages);
      return messages;
    }, { M1A: ['a1@example.test', 'a2@example.test'], M1B: ['b2@example.test'] });

    assert.equal(version, 4, 'the file is in the current format afterwards');
    const migrated = log.split('\n').filter((line) => line.includes('"msg":"store migrated to the current schema"'));
    assert.equal(migrated.length, 1, 'one log line says so');
    assert.match(migrated[0] ?? '', /"from":1,"to":4/);
    assert.deepEqual(views['M1A']?.deliveries.map((d) => `${d.recipient} ${d.state}`), ['a1@example.test delivered', 'a2@example.test delivered']);
    assert.deepEqual(views['M1B']?.deliveries.map((d) => `${d.recipient} ${d.state}`), ['b2@example.test delivered'], 'format 1 had deleted b1 (delivered)');
    assert.deepEqual(views['M1C']?.deliveries.map((d) => `${d.state} ${d.lastReply}`), ['failed 550 5.1.1 no such user']);
  });
});

describe('store files this build cannot use are refused, untouched', () => {
  const good = { RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:2526', SMTP_HOST: '127.0.0.1', SMTP_PORT: '0', HTTP_HOST: '127.0.0.1', HTTP_PORT: '0' };
  function start(dataDir: string) {
    const result = spawnSync(process.execPath, [join(ROOT, ENTRY.all)], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...good, DATA_DIR: dataDir }, encoding: 'utf8', timeout: 120_000 });
    return { code: result.status, stderr: result.stderr };
  }
  const one = { id: 'M9', from: 'a@origin.test', receivedAt: 1, body: body('M9'), recipients: [{ address: 'x@example.test', route: '127.0.0.1:2526', state: 'queued' as const }] };

  it('a file from a newer build: one line naming DATA_DIR and both versions, exit 78, the file byte for byte as it was', () => {
    const dir = tempDir();
    try {
      const path = join(dir.path, 'spool.sqlite');
      writeSqliteV3(path, [one], { version: 5, journal: 'DELETE' });
      const before = readFileSync(path);
      const { code, stderr } = start(dir.path);
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: DATA_DIR: ${path}: store schema 5 is newer than this build's 4 (written by a newer backupmx); run that version or a later one, the store was left unchanged\n`);
      assert.ok(readFileSync(path).equals(before), 'the file is unchanged');
    } finally {
      dir.remove();
    }
  });

  it('a SQLite file that is no backupmx store: one line, exit 78, untouched', () => {
    const dir = tempDir();
    try {
      const path = join(dir.path, 'spool.sqlite');
      const other = new DatabaseSync(path);
      other.exec(`CREATE TABLE messages (id TEXT PRIMARY KEY, subject TEXT); INSERT INTO messages VALUES ('1', 'not ours')`);
      other.close();
      const before = readFileSync(path);
      const { code, stderr } = start(dir.path);
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: DATA_DIR: ${path}: not a backupmx store (tables messages, no schema version); the file was left unchanged\n`);
      assert.ok(readFileSync(path).equals(before));
    } finally {
      dir.remove();
    }
  });

  it('a migration that fails half-way (a broken row) is rolled back: the file keeps its old format and every row', () => {
    const dir = tempDir();
    try {
      const path = join(dir.path, 'spool.sqlite');
      writeSqliteV1(path, [one, { ...one, id: 'M8' }]);
      const broken = new DatabaseSync(path);
      broken.exec(`UPDATE messages SET recipients = 'not json' WHERE id = 'M8'`);
      broken.close();
      const { code, stderr } = start(dir.path);
      assert.equal(code, 78);
      assert.equal(stderr, `backupmx all: configuration: DATA_DIR: ${path}: migration from store schema 1 to 2 failed, the file was left unchanged: malformed JSON\n`);
      const check = new DatabaseSync(path, { readOnly: true });
      assert.equal((check.prepare('PRAGMA user_version').get() as { user_version: number }).user_version, 0);
      assert.deepEqual(
        (check.prepare('SELECT name FROM pragma_table_info(?)').all('messages') as { name: string }[]).map((c) => c.name),
        ['id', 'mail_from', 'recipients', 'size', 'received_at'],
        'format 1 columns',
      );
      assert.deepEqual((check.prepare('SELECT id FROM messages ORDER BY id').all() as { id: string }[]).map((r) => r.id), ['M8', 'M9']);
      assert.equal((check.prepare('SELECT COUNT(*) AS n FROM deliveries').get() as { n: number }).n, 2);
      check.close();
    } finally {
      dir.remove();
    }
  });
});
