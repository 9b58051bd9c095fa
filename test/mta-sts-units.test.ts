import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { mxMatches, parseStsPolicy, parseStsRecord, stsHops, stsStep, stsTestingRefusal, type StsPolicy } from '../shared/src/rules/mta-sts.ts';
import { NOT_OFFERED } from '../shared/src/rules/next-hop-tls.ts';

describe('MTA-STS TXT record (RFC 8461 3.1)', () => {
  it('reads the id of the one v=STSv1 record, ignoring other TXT records', () => {
    assert.deepEqual(parseStsRecord([['v=STSv1; id=20160831085700Z;']]), { id: '20160831085700Z' });
    assert.deepEqual(parseStsRecord([['v=spf1 -all'], ['v=STSv1;', ' id=abc123']]), { id: 'abc123' }, 'strings joined');
    assert.deepEqual(parseStsRecord([['v=STSv1 ;id=a;ext_1=x.y;']]), { id: 'a' }, 'extensions and spacing');
  });

  it('means no policy for no record, two records, or a malformed one', () => {
    assert.ok('none' in parseStsRecord([]));
    assert.ok('none' in parseStsRecord([['v=STSv1; id=a;'], ['v=STSv1; id=b;']]));
    for (const text of ['v=STSv1;', 'v=STSv1; id=;', 'v=STSv1; id=has-dash;', `v=STSv1; id=${'a'.repeat(33)};`, 'v=STSv1;; id=a;', 'v=stsv1; id=a;', 'v=STSv1; id=a; bad field;']) {
      assert.ok('none' in parseStsRecord([[text]]), text);
    }
  });
});

describe('MTA-STS policy file (RFC 8461 3.2)', () => {
  it('parses the example of the RFC (CRLF), with a wildcard and repeated mx', () => {
    const text = 'version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n';
    assert.deepEqual(parseStsPolicy(text, 'id1', 5), { id: 'id1', mode: 'enforce', mx: ['mail.example.com', '*.example.net', 'backupmx.example.com'], maxAge: 604_800, fetchedAt: 5 });
  });

  it('takes LF lines, ignores unknown fields, keeps the first of a repeated field', () => {
    const parsed = parseStsPolicy('version: STSv1\nmode: testing\nmode: enforce\nfoo: bar\nmx: MX.Example.COM.\nmax_age:86400\n', 'x', 0);
    assert.ok(!('error' in parsed));
    assert.deepEqual([parsed.mode, parsed.mx, parsed.maxAge], ['testing', ['mx.example.com'], 86_400]);
  });

  it('allows mode none without mx', () => {
    const parsed = parseStsPolicy('version: STSv1\nmode: none\nmax_age: 0\n', 'x', 0);
    assert.ok(!('error' in parsed) && parsed.mode === 'none');
  });

  it('refuses a bad version, mode, max_age or mx, and a policy without mx', () => {
    const base = { version: 'STSv1', mode: 'enforce', mx: 'mx.example.com', max_age: '86400' };
    const render = (fields: Record<string, string | undefined>) => Object.entries(fields).filter(([, value]) => value !== undefined).map(([key, value]) => `${key}: ${value}`).join('\n');
    for (const change of [{ version: 'STSv2' }, { version: undefined }, { mode: 'Enforce' }, { mode: 'strict' }, { max_age: '31557601' }, { max_age: '-1' }, { max_age: '1e5' }, { mx: 'mx..example.com' }, { mx: 'mx.*.example.com' }, { mx: undefined }]) {
      assert.ok('error' in parseStsPolicy(render({ ...base, ...change }), 'x', 0), JSON.stringify(change));
    }
  });
});

describe('MTA-STS MX matching (RFC 8461 4.1)', () => {
  it('matches a name exactly (any case, trailing dot) or one left label under a wildcard', () => {
    assert.ok(mxMatches('Mail.Example.com.', 'mail.example.com'));
    assert.ok(mxMatches('mx1.example.net', '*.example.net'));
    assert.ok(!mxMatches('example.net', '*.example.net'), 'the wildcard needs a label');
    assert.ok(!mxMatches('a.b.example.net', '*.example.net'), 'only one label');
    assert.ok(!mxMatches('mailexample.com', 'example.com'));
    assert.ok(!mxMatches('evilexample.net', '*.example.net'));
  });
});

describe('MTA-STS cache (RFC 8461 3.3, 5.1)', () => {
  const DAY = 86_400_000;
  const cached = (id: string, fetchedAt: number, maxAge = 7 * 86_400): StsPolicy => ({ id, mode: 'enforce', mx: ['mx.example.com'], maxAge, fetchedAt });
  const now = 100 * DAY;

  it('uses the cached policy while its id is published and it is fresh; refreshes it past half its life or a day', () => {
    assert.equal(stsStep({ id: 'a' }, cached('a', now - 1000), now), 'cached');
    assert.equal(stsStep({ id: 'a' }, cached('a', now - 2 * DAY), now), 'refresh');
    assert.equal(stsStep({ id: 'a' }, cached('a', now - 6000, 10), now), 'refresh', 'short max_age');
    assert.equal(stsStep({ id: 'a' }, cached('a', now - 4000, 10), now), 'cached');
  });

  it('fetches for a new id, or when nothing usable is cached', () => {
    assert.equal(stsStep({ id: 'b' }, cached('a', now - 1000), now), 'fetch');
    assert.equal(stsStep({ id: 'a' }, null, now), 'fetch');
    assert.equal(stsStep({ id: 'a' }, cached('a', now - 8 * DAY), now), 'fetch', 'expired');
  });

  it('keeps the cached policy when the record is gone or DNS fails, until it expires', () => {
    assert.equal(stsStep({ none: 'no record' }, cached('a', now - DAY), now), 'cached');
    assert.equal(stsStep({ dnsError: 'ETIMEOUT' }, cached('a', now - DAY), now), 'cached');
    assert.equal(stsStep({ dnsError: 'ETIMEOUT' }, cached('a', now - 8 * DAY), now), 'none');
    assert.equal(stsStep({ none: 'no record' }, null, now), 'none');
  });
});

describe('MTA-STS applied to the MX hosts', () => {
  const policy = (mode: StsPolicy['mode']): StsPolicy => ({ id: 'p1', mode, mx: ['mx1.example.com', '*.backup.example.com'], maxAge: 86_400, fetchedAt: 0 });
  const hops = [
    { name: 'evil.example.net', host: '192.0.2.66' },
    { name: 'mx1.example.com', host: '192.0.2.1' },
    { name: 'b.backup.example.com', host: '192.0.2.2' },
    { name: 'evil.example.net', host: '2001:db8::66' },
  ];

  it('enforce keeps the MX hosts the policy names, in order, and names the others', () => {
    assert.deepEqual(stsHops(policy('enforce'), 'example.com', hops), { hops: [hops[1], hops[2]], skipped: ['evil.example.net'] });
  });

  it('enforce with no MX host named defers with 4.7.5; testing keeps them all', () => {
    assert.deepEqual(stsHops(policy('enforce'), 'example.com', [hops[0]!]), { defer: '4.7.5 MTA-STS policy of example.com (id p1, mode enforce) names none of its MX hosts (evil.example.net); the mail waits' });
    assert.deepEqual(stsHops(policy('testing'), 'example.com', hops), { hops, skipped: [] });
  });

  it('testing: says what enforce would have refused, host first, then TLS', () => {
    const verify = { level: 'verify' as const, trust: ['system'], pins: [] };
    const hop = 'mx1.example.com[192.0.2.1]:25';
    assert.equal(stsTestingRefusal(policy('testing'), 'evil.example.net', hop, NOT_OFFERED, verify), 'MX host evil.example.net is not in the policy (mx: mx1.example.com, *.backup.example.com)');
    assert.equal(stsTestingRefusal(policy('testing'), 'mx1.example.com', hop, NOT_OFFERED, verify), `4.7.4 TLS is required, but was not offered by host ${hop}`);
    assert.equal(stsTestingRefusal(policy('testing'), 'mx1.example.com', hop, { ...NOT_OFFERED, offered: true, secured: true, trusted: true }, verify), null);
    assert.equal(stsTestingRefusal(policy('enforce'), 'evil.example.net', hop, NOT_OFFERED, verify), null, 'only in testing mode');
  });
});
