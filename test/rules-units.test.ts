import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { splitAddress } from '../shared/src/rules/address.ts';
import { reportSuppressed, wantsReport } from '../shared/src/rules/dsn-policy.ts';
import { checkRcptParams } from '../shared/src/rules/dsn-params.ts';
import { applyProbe, initialState } from '../shared/src/rules/hysteresis.ts';
import { newQueueId } from '../shared/src/rules/queue-id.ts';
import { asciiAddress, checkRecipient } from '../shared/src/rules/relay-policy.ts';
import { nextAttemptAt } from '../shared/src/rules/retry.ts';
import { configuredTargets, routeForRecipient } from '../shared/src/rules/routing.ts';
import { formatTarget, parseTarget } from '../shared/src/rules/target.ts';

/**
 * The rules that moved off Node-only APIs (node:crypto, node:url, runtime/config.ts), as they
 * behave with nothing but Web-standard globals. `npm run test:deno` runs this file, and the other
 * rules-only unit files, under `deno test` with no permission granted.
 */

describe('rules without the host', () => {
  it('queue ids: 17 characters of base 32, time-ordered, random after the time', () => {
    const ids = Array.from({ length: 2000 }, () => newQueueId(Date.UTC(2026, 11, 2)));
    for (const id of ids) assert.match(id, /^[0-9A-V]{17}$/);
    assert.equal(new Set(ids.map((id) => id.slice(0, 9))).size, 1, 'the same millisecond, the same time part');
    assert.equal(new Set(ids).size, ids.length, 'no two alike');
    assert.ok(newQueueId(Date.UTC(2026, 11, 2)) < newQueueId(Date.UTC(2026, 11, 3)));
  });

  it('IDN domains to ASCII (as url.domainToASCII does), and nothing that is not a domain', () => {
    assert.equal(asciiAddress('user@bücher.test'), 'user@xn--bcher-kva.test');
    assert.equal(asciiAddress('jörg@Bücher.Test'), 'jörg@xn--bcher-kva.test');
    assert.equal(asciiAddress('user@bücher.test/evil.test'), 'user@bücher.test/evil.test', 'a URL path is not parsed into the host');
    assert.equal(asciiAddress('user@bü:25'), 'user@bü:25');
    assert.equal(asciiAddress('user@[192.0.2.1]'), 'user@[192.0.2.1]');
    assert.deepEqual(checkRecipient(asciiAddress('u@bücher.test'), new Set(['xn--bcher-kva.test'])), null);
    assert.equal(checkRecipient('u%other.test@example.test', new Set(['example.test']))?.status, '5.7.1');
  });

  it('routes a recipient to its domain\'s PRIMARY, PRIMARY, SMARTHOST or DNS MX, with a plain config object', () => {
    const config = { RELAY_DOMAINS: ['example.test', 'other.test'], PRIMARY: ['mx1.example.test', '[2001:db8::1]:2525'], SMARTHOST: 'relay.isp.test:587', domains: { 'other.test': { PRIMARY: ['mx'] } } };
    assert.equal(routeForRecipient('u@Example.Test', config), 'mx1.example.test:25,[2001:db8::1]:2525');
    assert.equal(routeForRecipient('u@other.test', config), 'mx:other.test');
    assert.equal(routeForRecipient('sender@far.test', config), 'relay.isp.test:587');
    assert.equal(routeForRecipient('sender@far.test', { ...config, SMARTHOST: undefined }), 'mx:far.test');
    assert.deepEqual(configuredTargets(config), ['mx1.example.test:25', '[2001:db8::1]:2525']);
    assert.deepEqual(parseTarget('[::1]:2526'), { host: '::1', port: 2526 });
    assert.equal(parseTarget('host:70000'), null);
    assert.equal(formatTarget({ host: '::1', port: 25 }), '[::1]:25');
    assert.deepEqual(splitAddress('"a@b"@X.Test.'), { local: '"a@b"', domain: 'x.test' });
  });

  it('DSN: who gets a report, from the header fields alone', () => {
    const fields = (map: Record<string, string>) => ({ getFirst: (name: string) => map[name] ?? '' });
    assert.equal(reportSuppressed('', null), 'null sender');
    assert.equal(reportSuppressed('s@o.test', fields({ 'auto-submitted': 'auto-replied' })), 'Auto-Submitted: auto-replied');
    assert.equal(reportSuppressed('s@o.test', fields({ 'content-type': 'multipart/report; report-type=delivery-status' })), 'the message is itself a report (multipart/report)');
    assert.equal(reportSuppressed('s@o.test', fields({ 'auto-submitted': 'no' })), null);
    assert.equal(reportSuppressed('s@o.test', null), null);
    assert.equal(wantsReport(['SUCCESS'], 'relayed'), true);
    assert.deepEqual(checkRcptParams({ args: { XFORWARD: 'x' } }), { code: 555, status: '5.5.4', text: 'Unsupported option: XFORWARD=x' });
    assert.equal(checkRcptParams({ args: { ORCPT: `rfc822;${'a'.repeat(500)}@x.test` } })?.code, 501);
    assert.equal(checkRcptParams({ args: { NOTIFY: 'FAILURE', ORCPT: 'rfc822;a@x.test' } }), null);
  });

  it('retry schedule and probe hysteresis', () => {
    assert.equal(nextAttemptAt(0, [60_000, 300_000], 1000), 61_000);
    const down = applyProbe(applyProbe(initialState(0), { ok: false, latencyMs: 1, error: 'refused' }, 1, { failures: 2, successes: 1 }).next, { ok: false, latencyMs: 1, error: 'refused' }, 2, { failures: 2, successes: 1 });
    assert.equal(down.transition, 'down');
    assert.equal(applyProbe(down.next, { ok: true, latencyMs: 1, greeting: '220 ok' }, 3, { failures: 2, successes: 1 }).transition, 'up');
  });
});
