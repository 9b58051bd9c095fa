/**
 * `node bench/bulk.ts [--messages 5000]`: how long the console's and the API's bulk hold takes on the
 * SQLite store, one durable write per batch (store.bulk) against one per message (store.hold).
 * Prints numbers; it is not a test.
 */
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { matchingIds } from '../services/spool/src/bulk.ts';
import { tempDir } from '../test/support/util.ts';

const { values } = parseArgs({ options: { messages: { type: 'string', default: '5000' } } });
const count = Number(values.messages);
const dir = tempDir('backupmx-bench-bulk-');
try {
  const store = await openSqliteStore(join(dir.path, 'spool.sqlite'));
  const body = Buffer.alloc(4096, 'x');
  for (let i = 0; i < count; i++) {
    await store.put({ id: `B${String(i).padStart(9, '0')}`, envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test', 'v@example.org'] }, body, receivedAt: Date.now() - i }, { 'u@example.test': 'r1', 'v@example.org': 'r2' });
  }
  const time = async <T>(what: string, work: () => Promise<T>) => {
    const start = performance.now();
    const result = await work();
    console.log(`${what.padEnd(44)} ${(performance.now() - start).toFixed(0).padStart(7)} ms`);
    return result;
  };
  const { ids } = await time(`collect ${count} ids of domain=example.test`, () => matchingIds(store, { domain: 'example.test' }));
  await time(`bulk hold (${ids.length} messages)`, () => store.bulk('hold', ids, Date.now()));
  await time(`bulk release (${ids.length} messages)`, () => store.bulk('release', ids, Date.now()));
  await time(`hold one by one (${ids.length} messages)`, async () => {
    for (const id of ids) await store.hold(id);
  });
  await store.close();
} finally {
  dir.remove();
}
