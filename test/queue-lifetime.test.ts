import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { describe, it } from 'node:test';
import { startPeer, startSystem, type Peer } from './support/dsn-peers.ts';
import { assertDateNear, parseReport, sendRaw } from './support/reports.ts';
import { freePort, waitFor } from './support/util.ts';

/**
 * QUEUE_LIFETIME, DELAY_WARNING and RECORD_RETENTION, shortened to seconds: the spool's sweep
 * expires mail and sends notices whether or not a primary (or any deliverer) is there.
 */

const SENDER = 'sender@origin.test';
const body = (subject: string) => `From: <${SENDER}>\r\nSubject: ${subject}\r\n\r\nHello.\r\n`;

async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
  return Buffer.concat(chunks);
}

function reportsAbout(peer: Peer, id: string) {
  return peer.messages.filter((received) => received.from === '' && received.raw.includes(`X-Backupmx-Queue-ID: ${id}`));
}

describe('queue lifetime', () => {
  it('the spool alone expires mail (no deliverer running): failed 4.4.7, one failure report queued', async () => {
    const system = await startSystem({ PRIMARY: `127.0.0.1:${await freePort()}`, QUEUE_LIFETIME: '1s', SWEEP_INTERVAL: '200ms' }, { deliver: false });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }, { address: 'b@example.test' }], message: body('never attempted') });
      const record = await waitFor('the expiry', async () => {
        const found = await system.store.getMessage(id ?? '');
        return found?.deliveries.every((delivery) => delivery.state === 'failed') ? found : null;
      });
      for (const delivery of record.deliveries) {
        assert.equal(delivery.lastReply, '4.4.7 Message expired: not delivered after 1s in the queue');
        assert.ok((delivery.settledAt ?? 0) - record.message.receivedAt >= 1000, 'not before QUEUE_LIFETIME');
      }
      assert.deepEqual(record.attempts.map((attempt) => [attempt.recipient, attempt.result, attempt.nextHop]), [
        ['a@example.test', 'failed', null],
        ['b@example.test', 'failed', null],
      ]);
      const reports = (await system.store.list({ sender: '<>' })).items;
      assert.equal(reports.length, 1, 'one report for the message, with both recipients');
      const report = reports[0];
      assert.ok(report);
      assert.deepEqual(report.message.recipients, [SENDER]);
      assert.equal(report.deliveries[0]?.route, 'mx:origin.test', 'without SMARTHOST a report goes by the sender domain\'s MX');
      const parsed = await parseReport(await readAll(await system.store.readBody(report.message.id)));
      assert.deepEqual(parsed.recipients.map((entry) => [entry['final-recipient'], entry.action, entry.status, entry['diagnostic-code']]), [
        ['rfc822; a@example.test', 'failed', '4.4.7', 'X-Backupmx; no delivery attempt succeeded in the queue lifetime'],
        ['rfc822; b@example.test', 'failed', '4.4.7', 'X-Backupmx; no delivery attempt succeeded in the queue lifetime'],
      ]);
      assert.equal(parsed.fields['reporting-mta'], 'dns; backup.example.test');
      assertDateNear(parsed.fields['arrival-date'], record.message.receivedAt, 1000, 'Arrival-Date');
      assert.deepEqual(parsed.recipients.map((entry) => entry['last-attempt-date']), [undefined, undefined], 'no Last-Attempt-Date: no attempt was made');
    } finally {
      await system.close();
    }
  });

  it('with the primary down: one delay notice at DELAY_WARNING, then one failure report at QUEUE_LIFETIME, both through SMARTHOST', async () => {
    const smarthost = await startPeer();
    const down = await freePort();
    const system = await startSystem({ PRIMARY: `127.0.0.1:${down}`, SMARTHOST: `127.0.0.1:${smarthost.port}`, DELAY_WARNING: '1s', QUEUE_LIFETIME: '3s', SWEEP_INTERVAL: '200ms' });
    try {
      const sent = await sendRaw(system.port, {
        from: SENDER,
        rcpts: [{ address: 'a@example.test' }, { address: 'b@example.test', params: 'NOTIFY=FAILURE' }, { address: 'c@example.test', params: 'NOTIFY=NEVER' }],
        message: body('waiting'),
      });
      const id = sent.id ?? '';
      const received = (await system.store.getMessage(id))?.message.receivedAt ?? 0;

      const delayed = await waitFor('the delay notice', () => reportsAbout(smarthost, id)[0]);
      const notice = await parseReport(delayed.raw);
      assert.equal(notice.mail.subject, 'Delayed Mail (still being retried)');
      assert.equal(notice.recipients.length, 1, 'only the recipient whose NOTIFY allows a delay notice (none given)');
      const [entry] = notice.recipients;
      assert.equal(entry?.['final-recipient'], 'rfc822; a@example.test');
      assert.equal(entry?.action, 'delayed');
      assert.equal(entry?.status, '4.4.1', 'no answer from the host');
      assert.equal(entry?.['remote-mta'], undefined, 'no remote MTA answered');
      assert.match(entry?.['diagnostic-code'] ?? '', new RegExp(`^X-Backupmx; connect ECONNREFUSED 127\\.0\\.0\\.1:${down}$`));
      assertDateNear(entry?.['will-retry-until'], received + 3000, 1000, 'Will-Retry-Until');
      assert.equal(notice.returned.contentType, 'text/rfc822-headers');

      const failedReport = await waitFor('the failure report', () => reportsAbout(smarthost, id)[1], 20_000);
      assert.equal(reportsAbout(smarthost, id).length, 2, 'one delay notice only');
      const failure = await parseReport(failedReport.raw);
      assert.equal(failure.mail.subject, 'Undelivered Mail Returned to Sender');
      assert.deepEqual(failure.recipients.map((item) => [item['final-recipient'], item.action, item.status]), [
        ['rfc822; a@example.test', 'failed', '4.4.7'],
        ['rfc822; b@example.test', 'failed', '4.4.7'],
      ], 'NOTIFY=NEVER leaves c out');
      assert.match(failure.recipients[0]?.['diagnostic-code'] ?? '', /^X-Backupmx; connect ECONNREFUSED/, 'the last attempt\'s error');
      const record = await system.store.getMessage(id);
      const lastAttempt = record?.attempts.filter((attempt) => attempt.recipient === 'a@example.test' && attempt.nextHop !== null).at(-1)?.at ?? 0;
      assertDateNear(failure.recipients[0]?.['last-attempt-date'], lastAttempt, 1000, 'Last-Attempt-Date: the deliverer\'s last attempt');
      for (const delivery of record?.deliveries ?? []) {
        assert.equal(delivery.state, 'failed');
        assert.match(delivery.lastReply ?? '', /^4\.4\.7 Message expired: not delivered after 3s in the queue; last reply: connect ECONNREFUSED/);
      }
      const history = record?.attempts.filter((attempt) => attempt.recipient === 'a@example.test').map((attempt) => [attempt.result, attempt.nextHop]);
      assert.deepEqual(history?.at(0), ['deferred', `127.0.0.1:${down}`], 'the deliverer\'s attempt is in the history');
      assert.deepEqual(history?.at(-1), ['failed', null], 'then the expiry');
    } finally {
      await system.close();
      await smarthost.close();
    }
  });

  it('purges delivered and failed records after RECORD_RETENTION', async () => {
    const primary = await startPeer({ rcpt: { 'bad@example.test': '550 5.1.1 User unknown' } });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}`, SMARTHOST: `127.0.0.1:${primary.port}`, RECORD_RETENTION: '1s', SWEEP_INTERVAL: '200ms' });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }, { address: 'bad@example.test' }], message: body('kept a while') });
      const record = await waitFor('the outcomes', async () => {
        const found = await system.store.getMessage(id ?? '');
        return found?.deliveries.every((delivery) => delivery.state !== 'queued') ? found : null;
      });
      assert.deepEqual(record.deliveries.map((delivery) => delivery.state), ['delivered', 'failed'], 'kept as records first');
      await waitFor('the purge', async () => (await system.store.getMessage(id ?? '')) === null, 10_000);
      await waitFor('the report purged too, once delivered', async () => (await system.store.stats()).delivered === 0 && (await system.store.list({})).total === 0, 10_000);
      assert.equal(reportsAbout(primary, id ?? '').length, 1, 'the report was delivered before');
    } finally {
      await system.close();
      await primary.close();
    }
  });
});
