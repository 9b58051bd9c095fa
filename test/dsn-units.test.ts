import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../shared/src/runtime/config.ts';
import { checkMailParams, checkRcptParams, dsnParams } from '../shared/src/rules/dsn-params.ts';
import { isSmtpReply, notifyOf, orcptOf, reportSuppressed, statusOf, wantsReport } from '../shared/src/rules/dsn-policy.ts';
import { parseHeaders } from '../shared/src/mail/message.ts';
import { reportId } from '../shared/src/mail/reports.ts';
import { deliveryStatus, humanText, reportSubject, rfc5322Date } from '../shared/src/mail/dsn-report.ts';
import { configuredRoutes, configuredTargets, mxDomainOf, routeForRecipient, routeTargets } from '../shared/src/rules/routing.ts';
import { orderMx, planMx, selfFrom } from '../services/deliverer/src/mx.ts';
import { verdicts } from '../shared/src/rules/outcomes.ts';
import { reportEntries } from '../services/deliverer/src/report-entries.ts';
import { expiryReply, formatDuration, hostOfHop } from '../services/spool/src/sweep.ts';
import { fakeResolver } from './support/fake-resolver.ts';

const NOW = Date.UTC(2026, 10, 28, 9, 0, 0);

describe('DSN policy (RFC 3461 / RFC 3464)', () => {
  it('asks NOTIFY: none means failures and delays, NEVER means nothing, SUCCESS means relayed', () => {
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((action) => wantsReport(null, action)), [true, true, false]);
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((action) => wantsReport(['NEVER'], action)), [false, false, false]);
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((action) => wantsReport(['SUCCESS', 'DELAY'], action)), [false, true, true]);
    assert.deepEqual((['failed', 'delayed', 'relayed'] as const).map((action) => wantsReport(['FAILURE'], action)), [true, false, false]);
  });

  it('finds a recipient\'s NOTIFY and ORCPT case-insensitively', () => {
    const envelope = { mailFrom: 's@o.test', rcptTo: ['A@x.test'], dsn: { 'A@x.test': { notify: ['SUCCESS'], orcpt: 'rfc822;A@x.test' } } };
    assert.deepEqual(notifyOf(envelope, 'a@x.test'), ['SUCCESS']);
    assert.equal(orcptOf(envelope, 'A@x.test'), 'rfc822;A@x.test');
    assert.equal(notifyOf(envelope, 'b@x.test'), null);
    assert.equal(orcptOf({ mailFrom: '', rcptTo: [] }, 'b@x.test'), null);
  });

  it('suppresses reports about a null sender, Auto-Submitted mail and reports', () => {
    const mail = (headers: string) => parseHeaders(Buffer.from(`${headers}Subject: x\r\n\r\nbody\r\n`));
    assert.equal(reportSuppressed('', mail('')), 'null sender');
    assert.equal(reportSuppressed('s@o.test', mail('Auto-Submitted: auto-replied\r\n')), 'Auto-Submitted: auto-replied');
    assert.equal(reportSuppressed('s@o.test', mail('Auto-Submitted: Auto-Generated; owner-email="x@y"\r\n')), 'Auto-Submitted: auto-generated');
    assert.equal(reportSuppressed('s@o.test', mail('Auto-Submitted: no\r\n')), null);
    assert.equal(reportSuppressed('s@o.test', mail('Content-Type: Multipart/Report;\r\n report-type=delivery-status; boundary=b\r\n')), 'the message is itself a report (multipart/report)');
    assert.equal(reportSuppressed('s@o.test', mail('Content-Type: multipart/mixed; boundary=b\r\n')), null);
  });

  it('takes the status from the reply: enhanced code, else the reply class, else the fallback', () => {
    assert.equal(statusOf('550 5.1.1 <a@x>: User unknown', '5.0.0'), '5.1.1');
    assert.equal(statusOf('550-5.7.1 first line 550 5.7.1 second', '5.0.0'), '5.7.1');
    assert.equal(statusOf('554 Transaction failed', '5.0.0'), '5.0.0');
    assert.equal(statusOf('4.4.4 No usable MX for x', '4.0.0'), '4.4.4');
    assert.equal(statusOf('connect ECONNREFUSED 127.0.0.1:25', '4.4.1'), '4.4.1');
    assert.equal(statusOf(null, '4.4.1'), '4.4.1');
    assert.equal(isSmtpReply('250 2.0.0 Ok'), true);
    assert.equal(isSmtpReply('4.4.4 No usable MX'), false);
    assert.equal(isSmtpReply('connect ECONNREFUSED'), false);
  });

  it('derives the report id from the message and its recipients, in the queue id format', () => {
    const id = reportId('1K8GPA3JL451D498M', NOW, 'attempt', ['b@x.test', 'a@x.test']);
    assert.match(id, /^[0-9A-V]{17}$/);
    assert.equal(id, reportId('1K8GPA3JL451D498M', NOW, 'attempt', ['a@x.test', 'b@x.test']), 'the same report, the same id');
    assert.notEqual(id, reportId('1K8GPA3JL451D498M', NOW, 'expired', ['a@x.test', 'b@x.test']));
    assert.notEqual(id, reportId('1K8GPA3JL451D498M', NOW, 'attempt', ['a@x.test']));
  });
});

describe('DSN report text', () => {
  const input = {
    reportingMta: 'backup.example.test',
    queueId: 'Q1',
    envelope: { mailFrom: 's@o.test', rcptTo: ['a@x.test', 'b@x.test'], envid: 'E1', clientHelo: 'mail.o.test', clientAddress: '::ffff:192.0.2.1' },
    arrivalDate: NOW,
    recipients: [
      { recipient: 'a@x.test', orcpt: 'rfc822;A@x.test', action: 'failed' as const, status: '5.1.1', remoteMta: 'mx.x.test', reply: `550 5.1.1 ${'very long reply '.repeat(8)}caf\u00e9`, lastAttemptAt: NOW },
      { recipient: 'b@x.test', orcpt: null, action: 'delayed' as const, status: '4.4.1', remoteMta: '192.0.2.5', reply: 'connect ECONNREFUSED', lastAttemptAt: null, willRetryUntil: NOW + 3_600_000 },
    ],
  };

  it('writes the message/delivery-status fields of RFC 3464', () => {
    const text = deliveryStatus(input);
    assert.ok(text.endsWith('\r\n'));
    const [head, first, second] = text.split('\r\n\r\n');
    assert.equal(head, ['Reporting-MTA: dns; backup.example.test', 'X-Backupmx-Queue-ID: Q1', 'Original-Envelope-Id: E1', 'Received-From-MTA: dns; mail.o.test ([192.0.2.1])', `Arrival-Date: ${rfc5322Date(NOW)}`].join('\r\n'));
    assert.match(first ?? '', /^Final-Recipient: rfc822; a@x\.test\r\nOriginal-Recipient: rfc822;A@x\.test\r\nAction: failed\r\nStatus: 5\.1\.1\r\nRemote-MTA: dns; mx\.x\.test\r\nDiagnostic-Code: smtp; 550 5\.1\.1 very long/);
    assert.ok((first ?? '').split('\r\n').every((line) => line.length <= 78), 'long fields are folded');
    assert.match(first ?? '', /caf\?$/m, '8-bit text becomes ?');
    assert.equal(second, ['Final-Recipient: rfc822; b@x.test', 'Action: delayed', 'Status: 4.4.1', 'Remote-MTA: dns; [192.0.2.5]', 'Diagnostic-Code: X-Backupmx; connect ECONNREFUSED', `Will-Retry-Until: ${rfc5322Date(NOW + 3_600_000)}`, ''].join('\r\n'));
    assert.equal(rfc5322Date(NOW), 'Sat, 28 Nov 2026 09:00:00 +0000');
  });

  it('names the gravest action in the subject and explains each recipient', () => {
    assert.equal(reportSubject(input.recipients), 'Undelivered Mail Returned to Sender');
    assert.equal(reportSubject([{ action: 'delayed' }, { action: 'relayed' }]), 'Delayed Mail (still being retried)');
    assert.equal(reportSubject([{ action: 'relayed' }]), 'Successful Mail Delivery Report');
    const text = humanText(input);
    assert.match(text, /^This is the mail system at host backup\.example\.test\./);
    assert.match(text, /<a@x\.test>: host mx\.x\.test said: 550 5\.1\.1 very long/);
    assert.match(text, /be tried until Sat, 28 Nov 2026 10:00:00 \+0000\./);
  });
});

describe('routing', () => {
  const base = { RELAY_DOMAINS: 'example.test,other.test', PRIMARY: 'mx1.example.test:2525,mx2.example.test' };

  it('routes relay domains to their PRIMARY, others to SMARTHOST or their MX', () => {
    const config = loadConfig(base);
    assert.equal(routeForRecipient('u@Example.TEST', config), 'mx1.example.test:2525,mx2.example.test:25');
    assert.equal(routeForRecipient('sender@origin.test', config), 'mx:origin.test');
    assert.equal(routeForRecipient('sender@origin.test', loadConfig({ ...base, SMARTHOST: 'relay.isp.test:587' })), 'relay.isp.test:587');
  });

  it('PRIMARY=mx (also per domain) routes by the domain\'s MX, and is not probed', () => {
    const config = loadConfig({ ...base, PRIMARY: 'MX', SMARTHOST: 'relay.isp.test' });
    assert.deepEqual(config.PRIMARY, ['mx']);
    assert.equal(routeForRecipient('u@other.test', config), 'mx:other.test');
    assert.equal(mxDomainOf('mx:other.test'), 'other.test');
    assert.deepEqual(routeTargets('mx:other.test'), []);
    assert.deepEqual(configuredRoutes(config).sort(), ['mx:example.test', 'mx:other.test'], 'the primaries\' routes (SMARTHOST is none)');
    assert.deepEqual(configuredTargets(config), [], 'mx routes are not probed');
    assert.deepEqual(configuredTargets(loadConfig(base)), ['mx1.example.test:2525', 'mx2.example.test:25']);
    const perDomain = { ...config, domains: { 'other.test': { PRIMARY: ['mx'] } } };
    assert.equal(routeForRecipient('u@other.test', { ...perDomain, PRIMARY: ['h.example.test'] }), 'mx:other.test');
    assert.equal(routeForRecipient('u@example.test', { ...perDomain, PRIMARY: ['h.example.test'] }), 'h.example.test:25');
  });

  it('refuses mx combined with other targets, naming the key', () => {
    assert.throws(() => loadConfig({ ...base, PRIMARY: 'mx, mx1.example.test' }), (error: Error) => error instanceof ConfigError && error.message === 'PRIMARY: mx (deliver by DNS MX) cannot be combined with other targets');
  });

  it('reads the delivery-report settings', () => {
    const defaults = loadConfig(base);
    assert.deepEqual([defaults.DELAY_WARNING, defaults.RECORD_RETENTION, defaults.SWEEP_INTERVAL, defaults.SELF_NAMES], [undefined, 7 * 86_400_000, 60_000, []]);
    const set = loadConfig({ ...base, DELAY_WARNING: '4h', RECORD_RETENTION: '30d', SWEEP_INTERVAL: '30s', SELF_NAMES: 'mx-b.example.test, 203.0.113.7' });
    assert.deepEqual([set.DELAY_WARNING, set.RECORD_RETENTION, set.SWEEP_INTERVAL, set.SELF_NAMES], [4 * 3_600_000, 30 * 86_400_000, 30_000, ['mx-b.example.test', '203.0.113.7']]);
    assert.equal(loadConfig({ ...base, DELAY_WARNING: '0' }).DELAY_WARNING, undefined, '0 turns delay notices off');
    assert.throws(() => loadConfig({ ...base, DELAY_WARNING: 'soon' }), /DELAY_WARNING: expected a duration/);
  });
});

describe('MX planning (RFC 5321 5.1)', () => {
  const self = selfFrom('backup.example.test', ['alias.example.test', '[203.0.113.7]'], ['192.0.2.99', '::1']);

  it('knows our names and addresses', () => {
    assert.deepEqual([...self.names].sort(), ['alias.example.test', 'backup.example.test']);
    assert.deepEqual([...self.addresses].sort(), ['192.0.2.99', '203.0.113.7', '::1']);
  });

  it('orders by preference, shuffles equal ones, drops ours and worse', () => {
    const records = [
      { exchange: 'c.test', priority: 10 },
      { exchange: 'a.test', priority: 5 },
      { exchange: 'b.test', priority: 10 },
      { exchange: 'backup.example.test.', priority: 20 },
      { exchange: 'd.test', priority: 30 },
    ];
    const first = orderMx(records, self, () => 0);
    const last = orderMx(records, self, () => 0.999);
    assert.equal(first.ourPreference, 20);
    assert.deepEqual(first.ordered.map((record) => record.exchange), ['a.test', 'b.test', 'c.test']);
    assert.deepEqual(last.ordered.map((record) => record.exchange), ['a.test', 'c.test', 'b.test'], 'equal preferences in random order');
    assert.deepEqual(orderMx(records.filter((record) => record.exchange !== 'backup.example.test.'), self).ordered.length, 4);
  });

  const resolverFor = (mx: Parameters<typeof fakeResolver>[0], a: Parameters<typeof fakeResolver>[1]) => fakeResolver(mx, a);

  it('tries at most five addresses, at least two, in MX order', async () => {
    const resolver = resolverFor(
      { 'x.test': [{ exchange: 'mx1.x.test', priority: 10 }, { exchange: 'mx2.x.test', priority: 20 }] },
      { 'mx1.x.test': ['192.0.2.1', '192.0.2.2', '192.0.2.3'], 'mx2.x.test': ['192.0.2.4', '192.0.2.5', '192.0.2.6'] },
    );
    const plan = await planMx('x.test', { resolver, self, port: 25 });
    assert.ok('hops' in plan);
    assert.deepEqual(plan.hops.map((hop) => `${hop.name}/${hop.host}`), ['mx1.x.test/192.0.2.1', 'mx1.x.test/192.0.2.2', 'mx1.x.test/192.0.2.3', 'mx2.x.test/192.0.2.4', 'mx2.x.test/192.0.2.5']);
  });

  it('treats an MX host that resolves to one of our addresses as us', async () => {
    const resolver = resolverFor({ 'x.test': [{ exchange: 'nat.x.test', priority: 10 }, { exchange: 'worse.x.test', priority: 20 }] }, { 'nat.x.test': ['203.0.113.7'], 'worse.x.test': ['192.0.2.8'] });
    assert.deepEqual(await planMx('x.test', { resolver, self, port: 25 }), { defer: '4.4.4 No usable MX for x.test: this host is its best MX (preference 10); the mail waits for a better one' });
  });

  it('uses the domain itself without MX records, and defers when nothing resolves', async () => {
    const implicit = await planMx('x.test', { resolver: resolverFor({}, { 'x.test': ['192.0.2.9'] }), self, port: 2525 });
    assert.deepEqual(implicit, { hops: [{ host: '192.0.2.9', port: 2525, name: 'x.test' }] });
    assert.deepEqual(await planMx('x.test', { resolver: resolverFor({}, {}), self, port: 25 }), { defer: '4.4.4 No usable MX for x.test: the domain has no address' });
    assert.deepEqual(await planMx('x.test', { resolver: resolverFor({ 'x.test': [{ exchange: 'gone.x.test', priority: 1 }] }, {}), self, port: 25 }), {
      defer: '4.4.4 No usable MX for x.test: no better mail host has an address',
    });
  });

  it('defers on DNS trouble and on a domain not found; refuses a null MX', async () => {
    const fail = (code: string) => Object.assign(new Error(code), { code });
    assert.deepEqual(await planMx('x.test', { resolver: resolverFor({ 'x.test': fail('ETIMEOUT') }, {}), self, port: 25 }), { defer: '4.4.3 Temporary DNS failure looking up MX records of x.test (ETIMEOUT)' });
    assert.deepEqual(await planMx('x.test', { resolver: resolverFor({ 'x.test': fail('ENOTFOUND') }, {}), self, port: 25 }), { defer: '4.4.4 Domain x.test not found in DNS (ENOTFOUND); will try again' });
    const temporary = resolverFor({ 'x.test': [{ exchange: 'mx.x.test', priority: 1 }] }, {});
    temporary.resolve4 = async () => {
      throw fail('ESERVFAIL');
    };
    assert.deepEqual(await planMx('x.test', { resolver: temporary, self, port: 25 }), { defer: '4.4.3 Temporary DNS failure looking up the mail hosts of x.test' });
    assert.deepEqual(await planMx('x.test', { resolver: resolverFor({ 'x.test': [{ exchange: '', priority: 0 }] }, {}), self, port: 25 }), { fail: '556 5.1.10 Domain x.test accepts no mail (null MX, RFC 7505)' });
  });
});

describe('what an attempt reports', () => {
  it('failed for 5xx, relayed for delivered to a hop without DSN, nothing for deferred', () => {
    const list = verdicts(['a@x.test', 'b@x.test', 'c@x.test'], {
      result: {
        response: '250 2.0.0 Ok: queued',
        rejectedErrors: [
          { message: 'x', recipient: 'b@x.test', response: '550 5.1.1 unknown', responseCode: 550 },
          { message: 'x', recipient: 'c@x.test', response: '452 4.2.2 full', responseCode: 452 },
        ],
      },
    });
    assert.deepEqual(reportEntries(list, { remoteMta: 'mx.x.test', dsn: false }, NOW), [
      { recipient: 'a@x.test', action: 'relayed', status: '2.0.0', remoteMta: 'mx.x.test', reply: '250 2.0.0 Ok: queued', lastAttemptAt: NOW },
      { recipient: 'b@x.test', action: 'failed', status: '5.1.1', remoteMta: 'mx.x.test', reply: '550 5.1.1 unknown', lastAttemptAt: NOW },
    ]);
    assert.deepEqual(reportEntries(list, { remoteMta: 'mx.x.test', dsn: true }, NOW).map((entry) => entry.action), ['failed'], 'a DSN hop reports success itself');
  });

  it('never fails a recipient on a refused greeting or a lost connection', () => {
    const greeting = { message: 'Invalid greeting', command: 'CONN', response: '554 5.3.2 No service', responseCode: 554 };
    assert.deepEqual(verdicts(['a@x.test'], { error: greeting }).map((verdict) => verdict.result), ['deferred']);
  });
});

describe('sweep helpers and ingress parameter checks', () => {
  it('names the host of a recorded next hop', () => {
    assert.equal(hostOfHop('127.0.0.1:2525'), '127.0.0.1');
    assert.equal(hostOfHop('[2001:db8::1]:25'), '2001:db8::1');
    assert.equal(hostOfHop('mx.x.test[192.0.2.1]:25'), 'mx.x.test');
    assert.equal(hostOfHop(null), null);
  });

  it('writes the expiry reply with the lifetime and the last reply', () => {
    assert.equal(formatDuration(5 * 86_400_000), '5d');
    assert.equal(formatDuration(90_000), '90s');
    assert.equal(formatDuration(1500), '1500ms');
    assert.equal(expiryReply(5 * 86_400_000, '451 4.3.0 later'), '4.4.7 Message expired: not delivered after 5d in the queue; last reply: 451 4.3.0 later');
  });

  it('checks ENVID and ORCPT lengths and collects the parameters per recipient', () => {
    assert.equal(checkMailParams({ args: { ENVID: 'x'.repeat(100) } }), null);
    assert.deepEqual(checkMailParams({ args: { ENVID: 'x'.repeat(101) } }), { code: 501, status: '5.5.4', text: 'ENVID longer than 100 characters' });
    assert.deepEqual(checkRcptParams({ args: { ORCPT: `rfc822;${'x'.repeat(494)}` } }), { code: 501, status: '5.5.4', text: 'ORCPT longer than 500 characters' });
    assert.equal(checkRcptParams({ args: false }), null);
    assert.deepEqual(
      dsnParams({ envelope: { dsn: { ret: 'full', envid: 'E' }, rcptTo: [{ address: 'a@x', dsn: { notify: ['success', 'delay'], orcpt: 'rfc822;a@x' } }, { address: 'b@x' }] } }),
      { ret: 'FULL', envid: 'E', dsn: { 'a@x': { notify: ['SUCCESS', 'DELAY'], orcpt: 'rfc822;a@x' } } },
    );
    assert.deepEqual(dsnParams({ envelope: { rcptTo: [{ address: 'b@x' }] } }), {});
  });
});
