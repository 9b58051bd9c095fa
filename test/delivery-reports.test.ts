import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startPeer, startSystem, type Peer, type PeerMessage, type System } from './support/dsn-peers.ts';
import { assertDateNear, parseReport, sendRaw } from './support/reports.ts';
import { freePort, waitFor } from './support/util.ts';

/**
 * Delivery status notifications (RFC 3464) as a sender gets them: a primary that refuses some
 * recipients, a smarthost that receives the reports, every report parsed with mailparser.
 */

const SENDER = 'sender@origin.test';

function message(subject: string, extra: string[] = []): string {
  return [`From: Sender <${SENDER}>`, 'To: <ok1@example.test>', `Subject: ${subject}`, `Message-ID: <${subject.replace(/\W+/g, '-')}@origin.test>`, ...extra, '', `Body of ${subject}.`, 'A second line.', ''].join('\r\n');
}

/** Reports about queue id `id` that reached `peer`. */
function reportsAbout(peer: Peer, id: string): PeerMessage[] {
  return peer.messages.filter((received) => received.from === '' && received.raw.includes(`X-Backupmx-Queue-ID: ${id}`));
}

async function outcomes(system: System, id: string, count: number) {
  return waitFor(`${count} recorded outcomes of ${id}`, async () => {
    const record = await system.store.getMessage(id);
    return record && record.deliveries.filter((delivery) => delivery.attempts > 0).length >= count ? record : null;
  });
}

describe('failure reports through SMARTHOST (primary without DSN)', () => {
  let system: System;
  let primary: Peer;
  let smarthost: Peer;

  before(async () => {
    primary = await startPeer({
      rcpt: {
        'bad1@example.test': '550 5.1.1 <bad1@example.test>: User unknown',
        'bad2@example.test': '553 5.7.1 <bad2@example.test>: Relay access denied',
        'later@example.test': '452 4.2.2 <later@example.test>: Mailbox full',
      },
    });
    smarthost = await startPeer();
    system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
  });
  after(async () => {
    await system.close();
    await primary.close();
    await smarthost.close();
  });

  it('partial rejection: the accepted recipients are delivered, one report from <> lists every refused one', async () => {
    const sent = await sendRaw(system.port, {
      from: SENDER,
      params: 'ENVID=env+2B1',
      rcpts: [
        { address: 'ok1@example.test' },
        { address: 'bad1@example.test', params: 'ORCPT=rfc822;Bad1@Example.TEST' },
        { address: 'bad2@example.test' },
        { address: 'later@example.test' },
        { address: 'ok2@example.test' },
      ],
      message: message('partial rejection'),
    });
    assert.ok(sent.ehlo.some((line) => /^250[ -]DSN$/.test(line)), 'our EHLO offers DSN');
    assert.match(sent.final, /^250 2\.0\.0 Ok: queued as /);
    const id = sent.id ?? '';
    const arrived = Date.now();

    const delivered = await waitFor('the delivery', () => primary.messages.find((received) => received.raw.includes(`id ${id}`)));
    assert.deepEqual(delivered.to, ['ok1@example.test', 'ok2@example.test'], 'the accepted recipients in one transaction');
    assert.deepEqual(delivered.rcptArgs['ok1@example.test'], {}, 'no DSN parameters to a primary without DSN');
    const record = await outcomes(system, id, 5);
    const state = Object.fromEntries(record.deliveries.map((delivery) => [delivery.recipient, [delivery.state, delivery.lastReply]]));
    assert.deepEqual(state['bad1@example.test'], ['failed', '550 5.1.1 <bad1@example.test>: User unknown']);
    assert.deepEqual(state['bad2@example.test'], ['failed', '553 5.7.1 <bad2@example.test>: Relay access denied']);
    assert.deepEqual(state['later@example.test'], ['queued', '452 4.2.2 <later@example.test>: Mailbox full'], 'a 452 at RCPT defers that recipient only');
    assert.equal(state['ok1@example.test']?.[0], 'delivered');
    for (const attempt of record.attempts) assert.equal(attempt.nextHop, `127.0.0.1:${primary.port}`, 'every attempt names its next hop');

    const [report, ...more] = await waitFor('the report', () => (reportsAbout(smarthost, id).length ? reportsAbout(smarthost, id) : null));
    assert.equal(more.length, 0, 'one report for the message');
    assert.ok(report);
    assert.equal(report.from, '', 'from the null sender');
    assert.deepEqual(report.to, [SENDER], 'to the envelope sender');
    const parsed = await parseReport(report.raw);
    assert.equal(parsed.mail.from?.value[0]?.address, 'MAILER-DAEMON@backup.example.test');
    assert.equal(parsed.mail.to && !Array.isArray(parsed.mail.to) ? parsed.mail.to.value[0]?.address : null, SENDER);
    assert.equal(parsed.mail.subject, 'Undelivered Mail Returned to Sender');
    assert.equal(parsed.mail.headers.get('auto-submitted'), 'auto-replied');
    assert.match(parsed.text, /<bad1@example\.test>: host 127\.0\.0\.1 said: 550 5\.1\.1 <bad1@example\.test>: User unknown/);

    assert.equal(parsed.fields['reporting-mta'], 'dns; backup.example.test');
    assert.equal(parsed.fields['x-backupmx-queue-id'], id);
    assert.equal(parsed.fields['original-envelope-id'], 'env+1', 'ENVID, xtext-decoded');
    assert.equal(parsed.fields['received-from-mta'], 'dns; client.origin.test ([127.0.0.1])');
    assertDateNear(parsed.fields['arrival-date'], arrived, 5000, 'Arrival-Date');

    assert.deepEqual(parsed.recipients.map((entry) => entry['final-recipient']), ['rfc822; bad1@example.test', 'rfc822; bad2@example.test'], 'all failed recipients, and only they');
    const [bad1, bad2] = parsed.recipients;
    assert.equal(bad1?.['original-recipient'], 'rfc822;Bad1@Example.TEST', 'ORCPT as the sender gave it');
    assert.equal(bad2?.['original-recipient'], undefined, 'no Original-Recipient without ORCPT');
    assert.deepEqual([bad1?.action, bad1?.status, bad1?.['remote-mta'], bad1?.['diagnostic-code']], ['failed', '5.1.1', 'dns; [127.0.0.1]', 'smtp; 550 5.1.1 <bad1@example.test>: User unknown']);
    assert.deepEqual([bad2?.action, bad2?.status, bad2?.['diagnostic-code']], ['failed', '5.7.1', 'smtp; 553 5.7.1 <bad2@example.test>: Relay access denied']);
    assertDateNear(bad1?.['last-attempt-date'], Date.now(), 10_000, 'Last-Attempt-Date');
    assert.equal(bad1?.['will-retry-until'], undefined);

    assert.equal(parsed.returned.contentType, 'text/rfc822-headers', 'headers only without RET=FULL');
    assert.match(parsed.returned.content, /^Received: from client\.origin\.test/, 'our Received header on top');
    assert.match(parsed.returned.content, /\r?\nSubject: partial rejection\r?\n/);
    assert.doesNotMatch(parsed.returned.content, /Body of partial rejection/);

    // The report is mail like any other: stored, delivered, recorded.
    const reports = await system.store.list({ sender: '<>' });
    const stored = reports.items.find((item) => item.message.recipients[0] === SENDER);
    assert.ok(stored, 'the report went through the spool');
    assert.equal(stored.deliveries[0]?.route, `127.0.0.1:${smarthost.port}`, 'routed to SMARTHOST');
  });

  it('RET=FULL returns the whole message', async () => {
    const sent = await sendRaw(system.port, { from: SENDER, params: 'RET=FULL', rcpts: [{ address: 'bad1@example.test' }], message: message('full return') });
    const id = sent.id ?? '';
    const report = await waitFor('the report', () => reportsAbout(smarthost, id)[0]);
    const parsed = await parseReport(report.raw);
    assert.equal(parsed.returned.contentType, 'message/rfc822');
    assert.match(parsed.returned.content, /Subject: full return/);
    assert.match(parsed.returned.content, /Body of full return\.\r?\nA second line\./);
  });

  it('sends no report for a null sender, Auto-Submitted mail, a report, or NOTIFY=NEVER', async () => {
    const cases = [
      { from: '', message: message('null sender') },
      { from: SENDER, message: message('auto submitted', ['Auto-Submitted: auto-generated']) },
      { from: SENDER, message: message('a report', ['MIME-Version: 1.0', 'Content-Type: multipart/report; report-type=delivery-status; boundary="b"']) },
    ];
    const reportsQueued = async () => (await system.store.list({ sender: '<>', limit: 1000 })).items.filter((item) => item.message.recipients[0] === SENDER).length;
    const before = await reportsQueued();
    const ids: string[] = [];
    for (const entry of cases) ids.push((await sendRaw(system.port, { ...entry, rcpts: [{ address: 'bad1@example.test' }] })).id ?? '');
    const never = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'bad1@example.test', params: 'NOTIFY=NEVER' }, { address: 'bad2@example.test', params: 'NOTIFY=FAILURE' }], message: message('never') });
    for (const id of ids) {
      const record = await outcomes(system, id, 1);
      assert.equal(record.deliveries[0]?.state, 'failed', 'the refusal is recorded');
    }
    await outcomes(system, never.id ?? '', 2);
    // A report is queued before the failure is recorded: whatever was to be sent is in the spool now.
    assert.equal(await reportsQueued(), before + 1, 'one report queued for these four messages: the NOTIFY=FAILURE one');
    for (const id of ids) assert.equal(reportsAbout(smarthost, id).length, 0, `no report about ${id}`);
    const neverReport = await waitFor('the report for NOTIFY=FAILURE', () => reportsAbout(smarthost, never.id ?? '')[0]);
    const parsed = await parseReport(neverReport.raw);
    assert.deepEqual(parsed.recipients.map((entry) => entry['final-recipient']), ['rfc822; bad2@example.test'], 'NOTIFY=NEVER leaves bad1 out');
  });
});

describe('RFC 3461 parameters and the primary', () => {
  let smarthost: Peer;
  before(async () => {
    smarthost = await startPeer();
  });
  after(async () => smarthost.close());

  it('passes RET, ENVID and each recipient\'s own NOTIFY and ORCPT to a primary that offers DSN, and reports nothing it accepted', async () => {
    const primary = await startPeer({ dsn: true });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const sent = await sendRaw(system.port, {
        from: SENDER,
        params: 'RET=HDRS ENVID=QQ+2B314',
        rcpts: [
          { address: 'a@example.test', params: 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@Example.TEST' },
          { address: 'b@example.test', params: 'NOTIFY=NEVER' },
          { address: 'c@example.test', params: 'ORCPT=rfc822;c+2Bx@example.test' },
          { address: 'd@example.test' },
        ],
        message: message('dsn passed on'),
      });
      const id = sent.id ?? '';
      const stored = await system.store.getMessage(id);
      assert.deepEqual(
        { ret: stored?.message.envelope.ret, envid: stored?.message.envelope.envid, dsn: stored?.message.envelope.dsn },
        {
          ret: 'HDRS',
          envid: 'QQ+314',
          dsn: {
            'a@example.test': { notify: ['SUCCESS', 'FAILURE'], orcpt: 'rfc822;A@Example.TEST' },
            'b@example.test': { notify: ['NEVER'] },
            'c@example.test': { orcpt: 'rfc822;c+x@example.test' },
          },
        },
        'the parameters are stored with the message, decoded',
      );
      const received = await waitFor('the delivery', () => primary.messages.find((entry) => entry.raw.includes(`id ${id}`)));
      assert.deepEqual(received.to, ['a@example.test', 'b@example.test', 'c@example.test', 'd@example.test'], 'one transaction');
      assert.equal(received.mailArgs['RET'], 'HDRS');
      assert.equal(received.mailArgs['ENVID'], 'QQ+314', 'ENVID passed on unchanged (xtext-encoded on the wire)');
      assert.deepEqual(received.rcptArgs['a@example.test'], { NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;A@Example.TEST' });
      assert.deepEqual(received.rcptArgs['b@example.test'], { NOTIFY: 'NEVER' });
      assert.deepEqual(received.rcptArgs['c@example.test'], { ORCPT: 'rfc822;c+x@example.test' });
      assert.deepEqual(received.rcptArgs['d@example.test'], {});
      await outcomes(system, id, 4);
      assert.equal(reportsAbout(smarthost, id).length, 0);
      assert.equal((await system.store.list({ sender: '<>' })).total, 0, 'no report queued: the primary reports on what it accepted');
    } finally {
      await system.close();
      await primary.close();
    }
  });

  it('NOTIFY=SUCCESS,DELAY with a primary without DSN: a "relayed" report (RFC 3461 5.2.2)', async () => {
    const primary = await startPeer({ dsn: false });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const sent = await sendRaw(system.port, {
        from: SENDER,
        params: 'ENVID=relay-1',
        rcpts: [
          { address: 'a@example.test', params: 'NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@example.test' },
          { address: 'b@example.test' },
          { address: 'c@example.test', params: 'NOTIFY=FAILURE' },
        ],
        message: message('relayed'),
      });
      const id = sent.id ?? '';
      const received = await waitFor('the delivery', () => primary.messages.find((entry) => entry.raw.includes(`id ${id}`)));
      assert.deepEqual(received.rcptArgs['a@example.test'], {}, 'a primary without DSN gets no DSN parameters');
      const report = await waitFor('the relayed report', () => reportsAbout(smarthost, id)[0]);
      const parsed = await parseReport(report.raw);
      assert.equal(parsed.mail.subject, 'Successful Mail Delivery Report');
      assert.equal(parsed.fields['original-envelope-id'], 'relay-1');
      assert.equal(parsed.recipients.length, 1, 'only the recipient that asked NOTIFY=SUCCESS');
      const [entry] = parsed.recipients;
      assert.equal(entry?.['final-recipient'], 'rfc822; a@example.test');
      assert.equal(entry?.['original-recipient'], 'rfc822;a@example.test');
      assert.equal(entry?.action, 'relayed');
      assert.equal(entry?.['remote-mta'], 'dns; [127.0.0.1]');
      const reply = /^smtp; (250 (2\.\d+\.\d+) .*)$/.exec(entry?.['diagnostic-code'] ?? '');
      assert.ok(reply, `the primary's reply to DATA: ${entry?.['diagnostic-code']}`);
      assert.equal(entry?.status, reply[2], 'Status: the enhanced code the primary gave');
      assert.equal((await system.store.getMessage(id))?.deliveries[0]?.lastReply, reply[1]);
      assert.equal(parsed.returned.contentType, 'text/rfc822-headers', 'a success report returns headers only');
      await outcomes(system, id, 3);
      assert.equal(reportsAbout(smarthost, id).length, 1);
    } finally {
      await system.close();
      await primary.close();
    }
  });
});

describe('when the next hop misbehaves', () => {
  let smarthost: Peer;
  before(async () => {
    smarthost = await startPeer();
  });
  after(async () => smarthost.close());

  it('tries the next PRIMARY after a 421 greeting', async () => {
    const busy = await startPeer({ greeting: '421 4.3.2 Busy, try later' });
    const good = await startPeer();
    const system = await startSystem({ PRIMARY: `127.0.0.1:${busy.port},127.0.0.1:${good.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: message('second primary') });
      await waitFor('the delivery to the second primary', () => good.messages.find((entry) => entry.raw.includes(`id ${id}`)));
      assert.ok(busy.connections() >= 1, 'the first primary was tried');
      const record = await outcomes(system, id ?? '', 1);
      assert.equal(record.deliveries[0]?.lastNextHop, `127.0.0.1:${good.port}`);
    } finally {
      await system.close();
      await busy.close();
      await good.close();
    }
  });

  it('tries the next PRIMARY when the first refuses the connection', async () => {
    const closed = await freePort();
    const good = await startPeer();
    const system = await startSystem({ PRIMARY: `127.0.0.1:${closed},127.0.0.1:${good.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: message('first primary refuses') });
      await waitFor('the delivery to the second primary', () => good.messages.find((entry) => entry.raw.includes(`id ${id}`)));
      const record = await outcomes(system, id ?? '', 1);
      assert.deepEqual([record.deliveries[0]?.state, record.deliveries[0]?.lastNextHop], ['delivered', `127.0.0.1:${good.port}`]);
    } finally {
      await system.close();
      await good.close();
    }
  });

  it('defers (never bounces) when the only primary refuses the greeting with 554', async () => {
    const refusing = await startPeer({ greeting: '554 5.3.2 No service here' });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${refusing.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }], message: message('refused greeting') });
      const record = await outcomes(system, id ?? '', 1);
      assert.equal(record.deliveries[0]?.state, 'queued');
      assert.match(record.deliveries[0]?.lastReply ?? '', /554 5\.3\.2 No service here/);
      assert.equal((await system.store.list({ sender: '<>' })).total, 0, 'no report');
    } finally {
      await system.close();
      await refusing.close();
    }
  });

  it('a connection dropped in mid-DATA defers everyone; a recipient refused 4xx at RCPT keeps its own reply', async () => {
    const dropping = await startPeer({ dropMidData: true, rcpt: { 'full@example.test': '452 4.2.2 <full@example.test>: Mailbox full' } });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${dropping.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }, { address: 'full@example.test' }], message: message('dropped') });
      const record = await outcomes(system, id ?? '', 2);
      const state = Object.fromEntries(record.deliveries.map((delivery) => [delivery.recipient, delivery]));
      assert.equal(state['a@example.test']?.state, 'queued');
      assert.doesNotMatch(state['a@example.test']?.lastReply ?? '', /^\d{3} /, 'no reply: the connection was lost');
      assert.equal(state['full@example.test']?.state, 'queued');
      assert.equal(state['full@example.test']?.lastReply, '452 4.2.2 <full@example.test>: Mailbox full', 'its RCPT reply, not the lost DATA');
      assert.equal(dropping.messages.length, 0);
    } finally {
      await system.close();
      await dropping.close();
    }
  });

  it('DATA refused 451 after a 550 at RCPT: the refused recipient fails (and is reported), the others wait', async () => {
    const primary = await startPeer({ data: '451 4.3.0 Try again later', rcpt: { 'bad@example.test': '550 5.1.1 <bad@example.test>: User unknown' } });
    const system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}`, SMARTHOST: `127.0.0.1:${smarthost.port}` });
    try {
      const { id } = await sendRaw(system.port, { from: SENDER, rcpts: [{ address: 'a@example.test' }, { address: 'bad@example.test' }], message: message('data refused') });
      const record = await outcomes(system, id ?? '', 2);
      const state = Object.fromEntries(record.deliveries.map((delivery) => [delivery.recipient, [delivery.state, delivery.lastReply]]));
      assert.deepEqual(state['a@example.test'], ['queued', '451 4.3.0 Try again later']);
      assert.deepEqual(state['bad@example.test'], ['failed', '550 5.1.1 <bad@example.test>: User unknown']);
      const report = await waitFor('the report', () => reportsAbout(smarthost, id ?? '')[0]);
      const parsed = await parseReport(report.raw);
      assert.deepEqual(parsed.recipients.map((entry) => [entry['final-recipient'], entry.action, entry.status]), [['rfc822; bad@example.test', 'failed', '5.1.1']]);
    } finally {
      await system.close();
      await primary.close();
    }
  });
});
