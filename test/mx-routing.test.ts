import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { startPeer, startSystem } from './support/dsn-peers.ts';
import { parseReport, sendRaw } from './support/reports.ts';
import { dnsError, fakeResolver } from './support/fake-resolver.ts';
import { waitFor } from './support/util.ts';

/**
 * PRIMARY=mx with a fake resolver (no internet): our own MX record and worse ones are dropped, a
 * better one is used, reports to senders go by their domain's MX. This host's addresses are given
 * as 192.0.2.99, so the test primary on 127.0.0.1 counts as another host.
 */

const SENDER = 'sender@origin.test';
const body = (subject: string) => `From: <${SENDER}>\r\nSubject: ${subject}\r\n\r\nHello.\r\n`;

describe('PRIMARY=mx', () => {
  it('defers with 4.4.4 when this host is the best MX: no loop to ourselves, no bounce, nothing sent', async () => {
    const worse = await startPeer();
    const resolver = fakeResolver(
      { 'example.test': [{ exchange: 'mx2.example.test', priority: 20 }, { exchange: 'Backup.Example.TEST.', priority: 10 }] },
      { 'mx2.example.test': ['127.0.0.1'] },
    );
    const system = await startSystem({ PRIMARY: 'mx' }, { deliverer: { resolver, mxPort: worse.port, localAddresses: ['192.0.2.99'] } });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: body('we are the best') });
      const record = await waitFor('the attempt', async () => {
        const found = await system.store.getMessage(id ?? '');
        return found?.deliveries[0]?.attempts ? found : null;
      });
      const [delivery] = record.deliveries;
      assert.equal(delivery?.route, 'mx:example.test');
      assert.equal(delivery?.state, 'queued', 'kept, to be tried again');
      assert.equal(delivery?.lastReply, '4.4.4 No usable MX for example.test: this host is its best MX (preference 10); the mail waits for a better one');
      assert.equal(delivery?.lastNextHop, null);
      assert.equal(worse.connections(), 0, 'the worse MX is never tried');
      assert.ok(!resolver.asked.includes('A mx2.example.test'), 'nor even looked up');
      assert.equal((await system.store.list({ sender: '<>' })).total, 0, 'no report');
    } finally {
      await system.close();
      await worse.close();
    }
  });

  it('delivers to a better MX, and sends the sender\'s report by the sender domain\'s MX', async () => {
    // One real server plays primary.example.test and mx.origin.test (MX hosts share port 25; here, its port).
    const peer = await startPeer({ rcpt: { 'bad@example.test': '550 5.1.1 <bad@example.test>: User unknown' } });
    const resolver = fakeResolver(
      {
        'example.test': [{ exchange: 'backup.example.test', priority: 10 }, { exchange: 'primary.example.test', priority: 5 }],
        'origin.test': [{ exchange: 'mx.origin.test', priority: 10 }],
      },
      { 'primary.example.test': ['127.0.0.1'], 'mx.origin.test': ['127.0.0.1'] },
    );
    const system = await startSystem({ PRIMARY: 'mx' }, { deliverer: { resolver, mxPort: peer.port, localAddresses: ['192.0.2.99'] } });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }, { address: 'bad@example.test' }], message: body('better MX') });
      const delivered = await waitFor('the delivery', () => peer.messages.find((entry) => entry.from === SENDER && entry.raw.includes(`id ${id}`)));
      assert.deepEqual(delivered.to, ['a@example.test']);
      const record = await waitFor('the outcomes', async () => {
        const found = await system.store.getMessage(id ?? '');
        return found?.deliveries.every((delivery) => delivery.attempts > 0) ? found : null;
      });
      const hop = `primary.example.test[127.0.0.1]:${peer.port}`;
      assert.deepEqual(record?.deliveries.map((delivery) => [delivery.recipient, delivery.state, delivery.lastNextHop]), [
        ['a@example.test', 'delivered', hop],
        ['bad@example.test', 'failed', hop],
      ]);
      const report = await waitFor('the report, by MX', () => peer.messages.find((entry) => entry.from === '' && entry.raw.includes(`X-Backupmx-Queue-ID: ${id}`)));
      assert.deepEqual(report.to, [SENDER]);
      const parsed = await parseReport(report.raw);
      assert.deepEqual(parsed.recipients.map((entry) => [entry['final-recipient'], entry['remote-mta'], entry['diagnostic-code']]), [
        ['rfc822; bad@example.test', 'dns; primary.example.test', 'smtp; 550 5.1.1 <bad@example.test>: User unknown'],
      ]);
      const reports = await system.store.list({ sender: '<>' });
      assert.equal(reports.items[0]?.deliveries[0]?.route, 'mx:origin.test');
      assert.ok(resolver.asked.includes('MX origin.test'));
    } finally {
      await system.close();
      await peer.close();
    }
  });

  it('tries the next address of the best MX when the first refuses the connection', async () => {
    // 127.0.0.2 is this machine too, but the peer listens on 127.0.0.1 only: the first address refuses.
    const peer = await startPeer();
    const resolver = fakeResolver(
      { 'example.test': [{ exchange: 'backup.example.test', priority: 10 }, { exchange: 'primary.example.test', priority: 5 }] },
      { 'primary.example.test': ['127.0.0.2', '127.0.0.1'] },
    );
    const system = await startSystem({ PRIMARY: 'mx' }, { deliverer: { resolver, mxPort: peer.port, localAddresses: ['192.0.2.99'] } });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: body('second address') });
      await waitFor('the delivery', () => peer.messages.find((entry) => entry.raw.includes(`id ${id}`)));
      const record = await waitFor('the outcome', async () => {
        const found = await system.store.getMessage(id ?? '');
        return found?.deliveries[0]?.attempts ? found : null;
      });
      assert.deepEqual([record.deliveries[0]?.state, record.deliveries[0]?.lastNextHop], ['delivered', `primary.example.test[127.0.0.1]:${peer.port}`]);
      assert.equal(record.attempts.length, 1, 'one attempt: both addresses were tried in it');
    } finally {
      await system.close();
      await peer.close();
    }
  });

  it('defers with 4.4.3 on a temporary DNS failure', async () => {
    const resolver = fakeResolver({ 'example.test': dnsError('ESERVFAIL') }, {});
    const system = await startSystem({ PRIMARY: 'mx' }, { deliverer: { resolver, localAddresses: ['192.0.2.99'] } });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: body('dns down') });
      const delivery = await waitFor('the attempt', async () => {
        const found = (await system.store.getMessage(id ?? ''))?.deliveries[0];
        return found?.attempts ? found : null;
      });
      assert.equal(delivery.state, 'queued');
      assert.equal(delivery.lastReply, '4.4.3 Temporary DNS failure looking up MX records of example.test (ESERVFAIL)');
    } finally {
      await system.close();
    }
  });
});
