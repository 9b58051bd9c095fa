import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import net, { type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createDeliverer } from '../services/deliverer/src/deliverer.ts';
import { createMemoryBroker } from '../shared/src/broker/memory-broker.ts';
import type { Logger } from '../shared/src/runtime/logger.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import type { Store } from '../shared/src/store/store.ts';
import { captureLog } from './support/log-capture.ts';
import { tempDir, waitFor } from './support/util.ts';

/**
 * A primary that takes the envelope and DATA, then reads nothing for a while (the sender's message
 * piles up in the socket buffers), then reads whatever still comes until the sender hangs up.
 * `complete` tells whether any session got the final dot.
 */
async function stallingPrimary(stallMs: number) {
  const sessions: { data: boolean; bytes: Buffer[]; closed: boolean }[] = [];
  const sockets = new Set<Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    const session = { data: false, bytes: [] as Buffer[], closed: false };
    sessions.push(session);
    socket.on('error', () => {});
    socket.on('close', () => (session.closed = true));
    socket.write('220 stall.test ESMTP\r\n');
    socket.on('data', (chunk: Buffer) => {
      if (session.data) return void session.bytes.push(chunk);
      for (const line of chunk.toString('latin1').split('\r\n').filter(Boolean)) {
        if (/^EHLO /i.test(line)) socket.write('250-stall.test\r\n250 8BITMIME\r\n');
        else if (/^(MAIL|RCPT) /i.test(line)) socket.write('250 2.1.0 Ok\r\n');
        else if (/^DATA$/i.test(line)) {
          session.data = true;
          socket.write('354 go ahead\r\n');
          socket.pause();
          setTimeout(() => socket.resume(), stallMs);
        } else if (/^QUIT$/i.test(line)) socket.end('221 2.0.0 Bye\r\n');
        else socket.write('250 2.0.0 Ok\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    sessions,
    complete: () => sessions.some((session) => Buffer.concat(session.bytes).includes('\r\n.\r\n')),
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Issue 9: leases are short and renewed while an attempt runs. A deliverer that cannot keep its
 * lease (renewals fail: the store is not answering; or the store says another claim holds it) cuts
 * the transaction off before the final dot, records nothing, and the delivery is claimable by
 * another deliverer as soon as the lease ends: two deliverers never send one delivery at once.
 */
describe('deliverer: a lease that cannot be kept stops its attempt', () => {
  const cases: Array<[string, (store: Store) => Store['renew'], string]> = [
    ['renewals fail (the store is not answering)', () => async () => { throw new Error('database is locked'); }, 'the lease could not be renewed before its end'],
    ['the store says the lease went to another claim', () => async () => [], 'the lease was taken over'],
  ];
  for (const [name, renew, reason] of cases) {
    it(`${name}: no final dot, nothing recorded, claimable again when the lease ends`, async () => {
      const dir = tempDir();
      const primary = await stallingPrimary(2500);
      const store = await openSqliteStore(join(dir.path, 'spool.sqlite'));
      const broker = createMemoryBroker(join(dir.path, 'dead'), captureLog('silent').log as unknown as Logger);
      const capture = captureLog('warn');
      const target = `127.0.0.1:${primary.port}`;
      const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: target, DATA_DIR: dir.path, SMTP_HOSTNAME: 'backup.example.test', DELIVERY_LEASE: '1s', RETRY_SCHEDULE: '1h' });
      const deliverer = createDeliverer(config, { ...store, renew: renew(store) }, broker, capture.log as unknown as Logger);
      try {
        // 8 MB: far more than the socket buffers hold while the primary stalls.
        const body = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), Buffer.alloc(8 * 1024 * 1024, 'x\r\n')]);
        await store.put({ id: 'LEASE1', envelope: { mailFrom: 'a@origin.test', rcptTo: ['u@example.test'] }, body, receivedAt: Date.now() }, { 'u@example.test': target });
        await deliverer.start();
        await waitFor('the primary to be in DATA', () => primary.sessions.some((session) => session.data));
        await waitFor('the attempt to be cut off', () => primary.sessions[0]?.closed, 20_000);
        await deliverer.stop();
        assert.equal(primary.complete(), false, 'the final dot never reached the primary');
        assert.ok(capture.entries('delivery lease lost; stopping its attempt').some((entry) => entry.reason === reason), JSON.stringify(capture.entries()));
        const detail = await store.getMessage('LEASE1');
        assert.deepEqual(detail?.deliveries.map((d) => [d.state, d.attempts]), [['queued', 0]], 'the stopped attempt recorded nothing');
        assert.deepEqual(detail?.attempts, []);
        // Once the lease has ended another deliverer takes it, at once (it is due).
        const taken = await store.claim({ route: target, now: Date.now() + 1000, leaseMs: 1000, owner: 'other#1', limit: 10 });
        assert.deepEqual(taken.map((claim) => claim.message.id), ['LEASE1']);
      } finally {
        await deliverer.stop();
        await primary.close();
        await broker.close();
        await store.close();
        dir.remove();
      }
    });
  }
});
