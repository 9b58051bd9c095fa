import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createLogger } from '../shared/src/runtime/logger.ts';
import type { CalloutResult } from '../services/ingress/src/callout.ts';
import { clientKey } from '../shared/src/rules/ip.ts';
import { createClientLimits } from '../services/ingress/src/client-limits.ts';
import { cachingResolver, withTimeout } from '../services/ingress/src/dns.ts';
import { dnsblQuery, isListing } from '../services/ingress/src/dnsbl.ts';
import { createHeaderMeter } from '../services/ingress/src/message-reader.ts';
import { createPrimaryState } from '../services/ingress/src/primary-state.ts';
import { receivedHeader } from '../services/ingress/src/received-header.ts';
import { createRecipientFile, listAccepts, parseRecipientList } from '../services/ingress/src/recipient-list.ts';
import { createVerifier } from '../services/ingress/src/recipient-verifier.ts';
import { asciiAddress } from '../shared/src/rules/relay-policy.ts';
import { authResultsField, dmarcRefusal, evaluateSender, needsBody } from '../services/ingress/src/sender-auth.ts';
import { createSpfCache, type SpfCache } from '../services/ingress/src/spf-cache.ts';
import { countsAsError, libraryStatus, nonAsciiRefusal } from '../services/ingress/src/smtp-server-patches.ts';
import { keepAlive, tempDir } from './support/util.ts';

const log = createLogger('test', 'silent');

describe('client limits', () => {
  it('keys IPv4 clients by address and IPv6 clients by their /64', () => {
    assert.equal(clientKey('192.0.2.7'), '192.0.2.7');
    assert.equal(clientKey('::ffff:192.0.2.7'), '192.0.2.7');
    assert.equal(clientKey('2001:db8:1:2::5'), '2001:0db8:0001:0002::/64');
    assert.equal(clientKey('2001:DB8:1:2:ffff:1:2:3'), clientKey('2001:db8:1:2::5'));
    assert.notEqual(clientKey('2001:db8:1:3::5'), clientKey('2001:db8:1:2::5'));
    assert.equal(clientKey('::1'), '0000:0000:0000:0000::/64');
  });

  it('counts connections per client and in all, and releases them', () => {
    const limits = createClientLimits({ hostname: 'mx.test', maxConnections: 3, maxConnectionsPerClient: 2, messagesPerMinute: 0, recipientsPerMinute: 0 });
    assert.equal(limits.open('192.0.2.1'), null);
    assert.equal(limits.open('192.0.2.1'), null);
    assert.deepEqual(limits.open('192.0.2.1'), { code: 421, status: '4.7.0', text: 'mx.test Error: too many connections from 192.0.2.1' });
    assert.equal(limits.open('2001:db8::1'), null);
    assert.equal(limits.open('192.0.2.9')?.text, 'mx.test Error: too many connections, try again later');
    limits.close('192.0.2.1');
    assert.equal(limits.open('192.0.2.9'), null);
    assert.deepEqual(limits.counts(), { connections: 3, clients: 3 });
    for (const address of ['192.0.2.1', '2001:db8::1', '192.0.2.9']) limits.close(address);
    assert.deepEqual(limits.counts(), { connections: 0, clients: 0 });
  });

  it('limits messages and recipients per client and minute, in fixed windows', () => {
    const limits = createClientLimits({ hostname: 'mx.test', maxConnections: 10, maxConnectionsPerClient: 10, messagesPerMinute: 2, recipientsPerMinute: 5 });
    const t0 = 1_000_000;
    assert.equal(limits.recipient('192.0.2.1', true, t0), null);
    assert.equal(limits.recipient('192.0.2.1', true, t0 + 1), null);
    assert.deepEqual(limits.recipient('192.0.2.1', true, t0 + 2), { code: 450, status: '4.7.1', text: 'Error: too much mail from 192.0.2.1, try again later' });
    assert.equal(limits.recipient('192.0.2.1', false, t0 + 3), null);
    assert.equal(limits.recipient('192.0.2.1', false, t0 + 4), null);
    assert.equal(limits.recipient('192.0.2.1', false, t0 + 5), null);
    assert.equal(limits.recipient('192.0.2.1', false, t0 + 6)?.text, 'Error: too many recipients from 192.0.2.1, try again later');
    assert.equal(limits.recipient('192.0.2.2', true, t0 + 7), null, 'another client has its own counts');
    assert.equal(limits.recipient('192.0.2.1', true, t0 + 60_000), null, 'a new minute');
  });

  it('has no rate limits when they are 0', () => {
    const limits = createClientLimits({ hostname: 'mx.test', maxConnections: 10, maxConnectionsPerClient: 10, messagesPerMinute: 0, recipientsPerMinute: 0 });
    for (let index = 0; index < 10_000; index++) assert.equal(limits.recipient('192.0.2.1', true, 1), null);
  });
});

describe('primary state from health events', () => {
  it('is up when any target of a route is, down when all are, unknown without fresh news', () => {
    const state = createPrimaryState(30_000);
    const route = 'a.test:25,b.test:25';
    assert.equal(state.route(route, 0), 'unknown');
    state.update({ target: 'a.test:25', state: 'down', since: 0 }, 0);
    assert.equal(state.route(route, 1), 'unknown', 'b.test has no news');
    state.update({ target: 'b.test:25', state: 'down', since: 0 }, 0);
    assert.equal(state.route(route, 1), 'down');
    state.update({ target: 'b.test:25', state: 'up', since: 0 }, 2);
    assert.equal(state.route(route, 3), 'up');
    assert.equal(state.route(route, 40_000), 'unknown', 'stale news counts for nothing');
    assert.equal(state.allUp([route, 'a.test:25'], 3), false);
    assert.equal(state.allUp([route], 3), true);
    state.update({ nonsense: true } as never, 4);
    assert.equal(state.route(route, 5), 'up');
  });
});

describe('recipient lists', () => {
  it('parses one address or @domain per line, skipping comments and extra columns', () => {
    const entries = parseRecipientList('# users\nAlice@Example.Test\r\nbob@example.test OK\n\n  @whole.test  # catch-all\nnot-an-address\n');
    assert.deepEqual([...entries], ['alice@example.test', 'bob@example.test', '@whole.test']);
  });

  it('matches case-insensitively, and whole domains', () => {
    const entries = parseRecipientList('alice@example.test\n@whole.test\n');
    assert.ok(listAccepts(entries, 'ALICE@example.TEST'));
    assert.ok(listAccepts(entries, 'alice@example.test.'));
    assert.ok(listAccepts(entries, 'anyone@Whole.Test'));
    assert.ok(!listAccepts(entries, 'bob@example.test'));
    assert.ok(!listAccepts(entries, 'anyone@sub.whole.test'));
    assert.ok(!listAccepts(entries, 'postmaster'));
  });

  it('re-reads a file when it changes and keeps the last good list when it vanishes', () => {
    const dir = tempDir();
    const path = join(dir.path, 'list.txt');
    try {
      const file = createRecipientFile(path, log, 0);
      assert.throws(() => file.entries(1), /cannot read recipient list/);
      writeFileSync(path, 'a@example.test\n');
      assert.ok(file.entries(2).has('a@example.test'));
      writeFileSync(`${path}.new`, 'b@example.test\n');
      renameSync(`${path}.new`, path);
      assert.deepEqual([...file.entries(3)], ['b@example.test']);
      rmSync(path);
      assert.deepEqual([...file.entries(4)], ['b@example.test']);
    } finally {
      dir.remove();
    }
  });
});

describe('DNSBL names', () => {
  it('reverses IPv4 octets and IPv6 nibbles', () => {
    assert.equal(dnsblQuery('192.0.2.99', 'zen.example'), '99.2.0.192.zen.example');
    assert.equal(dnsblQuery('::ffff:192.0.2.99', 'zen.example'), '99.2.0.192.zen.example');
    assert.equal(dnsblQuery('2001:db8::567:89ab', 'zen.example'), 'b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.example');
    assert.equal(dnsblQuery('not an ip', 'zen.example'), null);
  });

  it('counts only 127/8 answers, and not the 127.255.255.x error codes', () => {
    assert.ok(isListing('127.0.0.2'));
    assert.ok(isListing('127.0.0.11'));
    assert.ok(!isListing('127.255.255.254'));
    assert.ok(!isListing('192.0.2.1'));
    assert.ok(!isListing(['127.0.0.2']));
  });
});

describe('header size meter', () => {
  const measure = (chunks: string[], limit = 1000) => {
    const meter = createHeaderMeter(limit);
    for (const chunk of chunks) meter.push(Buffer.from(chunk, 'latin1'));
    return { size: meter.size, over: meter.over };
  };

  it('measures up to and including the first empty line, CRLF or LF, across chunks', () => {
    assert.deepEqual(measure(['Subject: x\r\n\r\nbody']), { size: 14, over: false });
    assert.deepEqual(measure(['Subject: x\n\nbody']), { size: 12, over: false });
    assert.deepEqual(measure(['Subject: x\r', '\n', '\r', '\nbody']), { size: 14, over: false });
    assert.deepEqual(measure(['\r\nbody only']), { size: 2, over: false });
    assert.deepEqual(measure(['A: 1\r\nB: 2\r\n\r\n']), { size: 14, over: false });
    assert.deepEqual(measure(['\nbody only']), { size: 1, over: false });
    assert.deepEqual(measure(['A: 1\r\n\nbody']), { size: 7, over: false }, 'a bare LF after a CRLF is an empty line');
    assert.deepEqual(measure(['A: 1\r\r\nB: 2\n\r\nbody']), { size: 14, over: false });
    assert.deepEqual(measure(['A: 1\r\nB: 2\r\n']), { size: null, over: false }, 'no empty line yet');
  });

  it('finds the same end wherever the chunks break, one byte at a time included', () => {
    for (const text of ['Subject: x\r\n folded\r\n\r\nbody\r\n\r\n', 'A: 1\n\nb', '\r\nbody', '\nbody', 'A: 1\r\r\nB: 2\n\r\nbody', 'A\r\n\r']) {
      const whole = measure([text]);
      for (let a = 0; a <= text.length; a++) {
        for (let b = a; b <= text.length; b++) assert.deepEqual(measure([text.slice(0, a), text.slice(a, b), text.slice(b)]), whole, `${JSON.stringify(text)} cut at ${a}, ${b}`);
      }
      assert.deepEqual(measure([...text]), whole, `${JSON.stringify(text)} byte by byte`);
    }
  });

  it('is over the limit as soon as the header section is known to be larger', () => {
    assert.equal(measure([`X: ${'y'.repeat(2000)}\r\n\r\n`]).over, true);
    assert.equal(measure(['X: y\r\n'.repeat(100), 'X: y\r\n'.repeat(100)]).over, true, 'no end yet, already over');
    assert.equal(measure(['X: y\r\n'.repeat(100)]).over, false, 'no end yet, within the limit');
  });
});

describe('smtp-server patches: replies', () => {
  it('gives the library\'s own 421s precise enhanced codes', () => {
    assert.equal(libraryStatus(421, 'mx.test You talk too soon'), '4.7.0');
    assert.equal(libraryStatus(421, 'Error: too many unrecognized commands'), '4.7.0');
    assert.equal(libraryStatus(421, 'Server shutting down'), '4.3.2');
    assert.equal(libraryStatus(421, 'Timeout - closing connection'), '4.4.2');
    assert.equal(libraryStatus(500, 'Error: command not recognized'), null);
  });

  it('counts refusals as errors, but not 421 nor "too many recipients"', () => {
    assert.ok(countsAsError(550, '5.7.1 Relay access denied'));
    assert.ok(countsAsError(500, 'Error: command not recognized'));
    assert.ok(!countsAsError(452, '4.5.3 Error: too many recipients'));
    assert.ok(!countsAsError(421, '4.7.0 bye'));
    assert.ok(!countsAsError(250, 'OK'));
  });

  it('refuses non-ASCII addresses without SMTPUTF8, and bytes that are not UTF-8 with it', () => {
    const line = (text: string) => Buffer.from(text);
    assert.equal(nonAsciiRefusal('MAIL', line('MAIL FROM:<a@origin.test>'), false), null);
    assert.deepEqual(nonAsciiRefusal('MAIL', line('MAIL FROM:<jörg@origin.test>'), false), { code: 553, status: '5.6.7', text: 'Error: non-ASCII address without SMTPUTF8' });
    assert.equal(nonAsciiRefusal('MAIL', line('MAIL FROM:<jörg@origin.test> SMTPUTF8'), false), null);
    assert.equal(nonAsciiRefusal('MAIL', line('MAIL FROM:<smtputf8@jörg.test>'), false)?.code, 553, 'SMTPUTF8 in the address is not the parameter');
    assert.equal(nonAsciiRefusal('RCPT', line('RCPT TO:<jörg@example.test>'), false)?.code, 553);
    assert.equal(nonAsciiRefusal('RCPT', line('RCPT TO:<jörg@example.test>'), true), null);
    assert.deepEqual(nonAsciiRefusal('RCPT', Buffer.from([...line('RCPT TO:<'), 0xc3, 0x28, ...line('@example.test>')]), true), { code: 501, status: '5.1.3', text: 'Error: address is not valid UTF-8' });
  });
});

describe('addresses in ASCII', () => {
  it('turns a Unicode domain into its A-label form and leaves the rest alone', () => {
    assert.equal(asciiAddress('user@bücher.test'), 'user@xn--bcher-kva.test');
    assert.equal(asciiAddress('jörg@Bücher.Test'), 'jörg@xn--bcher-kva.test');
    assert.equal(asciiAddress('User@Example.Test'), 'User@Example.Test');
    assert.equal(asciiAddress('user@[192.0.2.1]'), 'user@[192.0.2.1]');
    assert.equal(asciiAddress('postmaster'), 'postmaster');
  });
});

describe('sender authentication helpers', () => {
  it('picks the Authentication-Results field out of mailauth\'s header block', () => {
    const block = 'Received-SPF: pass (mx.test: domain of a@b.test designates 192.0.2.1 as permitted sender)\r\n client-ip=192.0.2.1;\r\nAuthentication-Results: mx.test;\r\n dkim=none;\r\n spf=pass smtp.mailfrom=a@b.test\r\n';
    assert.equal(authResultsField(block), 'Authentication-Results: mx.test;\r\n dkim=none;\r\n spf=pass smtp.mailfrom=a@b.test\r\n');
    assert.equal(authResultsField('Received-SPF: none\r\n'), null);
  });

  it('refuses only a DMARC fail under a reject policy', () => {
    assert.deepEqual(dmarcRefusal({ result: 'fail', policy: 'reject', domain: 'bank.test' }), {
      code: 550,
      status: '5.7.1',
      text: 'Message rejected: DMARC policy of bank.test is reject and the message fails it',
    });
    assert.equal(dmarcRefusal({ result: 'fail', policy: 'quarantine', domain: 'bank.test' }), null);
    assert.equal(dmarcRefusal({ result: 'pass', policy: 'reject', domain: 'bank.test' }), null);
    assert.equal(dmarcRefusal(null), null);
  });

  it('caches DNS answers and "not found" for a while, shares concurrent lookups, and forgets timeouts', async () => {
    let now = 0;
    const asked: string[] = [];
    const answers: Record<string, () => Promise<unknown[]>> = {
      'TXT a.test': async () => [['v=spf1 -all']],
      'TXT gone.test': async () => Promise.reject(Object.assign(new Error('nx'), { code: 'ENOTFOUND' })),
      'TXT slow.test': async () => Promise.reject(Object.assign(new Error('timeout'), { code: 'ETIMEOUT' })),
    };
    const resolve = cachingResolver(
      async (name, rrtype) => {
        asked.push(`${rrtype} ${name}`);
        return (answers[`${rrtype} ${name}`] ?? (async () => []))();
      },
      { ttlMs: 1000, maxEntries: 2, now: () => now },
    );
    assert.deepEqual(await Promise.all([resolve('a.test', 'TXT'), resolve('A.TEST', 'TXT')]), [[['v=spf1 -all']], [['v=spf1 -all']]]);
    await assert.rejects(resolve('gone.test', 'TXT'), { code: 'ENOTFOUND' });
    await assert.rejects(resolve('gone.test', 'TXT'), { code: 'ENOTFOUND' });
    await assert.rejects(resolve('slow.test', 'TXT'), { code: 'ETIMEOUT' });
    await assert.rejects(resolve('slow.test', 'TXT'), { code: 'ETIMEOUT' });
    assert.deepEqual(asked, ['TXT a.test', 'TXT gone.test', 'TXT slow.test', 'TXT slow.test']);
    now = 1001;
    await resolve('a.test', 'TXT');
    assert.equal(asked.at(-1), 'TXT a.test', 'asked again once the answer expired');
  });

  it('reuses an SPF verdict for the same client, HELO and sender, never one from a temporary error, with the same header as a fresh check', async () => {
    let now = 0;
    const asked: string[] = [];
    let spfTimesOut = false;
    const resolver = async (name: string, rrtype: string): Promise<unknown[]> => {
      asked.push(`${rrtype} ${name}`);
      if (rrtype === 'TXT' && name === 'origin.test') {
        if (spfTimesOut) throw Object.assign(new Error('timeout'), { code: 'ETIMEOUT' });
        return [['v=spf1 ip4:192.0.2.1 -all']];
      }
      throw Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
    };
    const spfCache = createSpfCache({ ttlMs: 1000, maxEntries: 10, now: () => now });
    const message = Buffer.from('From: <a@origin.test>\r\nSubject: hi\r\n\r\nbody\r\n');
    const check = (clientAddress: string, cache: SpfCache | null = spfCache) =>
      evaluateSender({ message, clientAddress, helo: 'mail.origin.test', mailFrom: 'a@origin.test', hostname: 'mx.example.test', resolver, timeoutMs: 5000, spfCache: cache });
    const spfLookups = () => asked.filter((question) => question === 'TXT origin.test').length;

    const fresh = await check('192.0.2.1', null);
    assert.match(fresh.header, /spf=pass/);
    const [first, second] = await Promise.all([check('192.0.2.1'), check('192.0.2.1')]);
    assert.equal(spfLookups(), 2, 'one check for both concurrent messages');
    assert.equal((await check('192.0.2.1')).header, fresh.header);
    assert.equal(first.header, fresh.header);
    assert.equal(second.header, fresh.header);
    assert.equal(spfLookups(), 2);
    assert.ok(asked.filter((question) => question === 'TXT _dmarc.origin.test').length >= 4, 'DKIM and DMARC are still evaluated for every message');
    assert.match((await check('192.0.2.9')).header, /spf=fail/, 'another client, another verdict');
    assert.equal(spfLookups(), 3);

    now = 1001;
    spfTimesOut = true;
    assert.match((await check('192.0.2.1')).header, /spf=temperror/, 'asked again once the verdict expired');
    assert.match((await check('192.0.2.1')).header, /spf=temperror/);
    assert.equal(spfLookups(), 5, 'a temporary error is not remembered');
    spfTimesOut = false;
    assert.match((await check('192.0.2.1')).header, /spf=pass/);
  });

  it('judges unsigned mail on its header section alone, with the verdict of the whole message; signed mail needs its body', async () => {
    const resolver = async (name: string, rrtype: string): Promise<unknown[]> => {
      if (rrtype === 'TXT' && name === 'origin.test') return [['v=spf1 ip4:192.0.2.1 -all']];
      if (rrtype === 'TXT' && name === '_dmarc.origin.test') return [['v=DMARC1; p=reject']];
      throw Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
    };
    const head = 'From: <a@origin.test>\r\nTo: <u@example.test>\r\nSubject: hi\r\nX-DKIM-Signature: not one\r\n\r\n';
    const check = (message: Buffer, clientAddress: string) =>
      evaluateSender({ message, clientAddress, helo: 'mail.origin.test', mailFrom: 'a@origin.test', hostname: 'mx.example.test', resolver, timeoutMs: 5000 });
    assert.equal(needsBody(Buffer.from(head)), false);
    for (const client of ['192.0.2.1', '192.0.2.9']) {
      const whole = await check(Buffer.from(`${head}body\nwith a bare LF\r\nDKIM-Signature: in the body\r\n`), client);
      const alone = await check(Buffer.from(head), client);
      assert.equal(alone.header, whole.header);
      assert.deepEqual(alone.dmarc, whole.dmarc);
    }
    assert.equal(needsBody(Buffer.from(`DKIM-Signature: v=1; d=origin.test\r\n${head}`)), true);
    assert.equal(needsBody(Buffer.from(`Received: x\r\ndkim-signature : v=1\r\n${head}`)), true);
    assert.equal(needsBody(Buffer.from(`ARC-Seal: i=1\r\n${head}`)), true);
  });

  it('limits a DNS lookup in time, reporting ETIMEOUT', async () => {
    const hung = withTimeout(() => new Promise(() => {}), 20);
    await assert.rejects(keepAlive(hung('example.test', 'TXT')), (error: NodeJS.ErrnoException) => error.code === 'ETIMEOUT');
    const fine = withTimeout(async () => [['v=spf1 -all']], 1000);
    assert.deepEqual(await fine('example.test', 'TXT'), [['v=spf1 -all']]);
  });
});

describe('recipient verifier', () => {
  function setup(options: { state?: 'up' | 'down' | 'unknown'; result?: Partial<CalloutResult> } = {}) {
    const cache = new Map<string, { value: string; expiresAt: number }>();
    const calls: string[] = [];
    let now = 1_000_000;
    const verifier = createVerifier({
      store: {
        cacheGet: async (key, at) => {
          const entry = cache.get(key);
          return entry && entry.expiresAt > at ? entry.value : null;
        },
        cachePut: async (key, value, expiresAt) => void cache.set(key, { value, expiresAt }),
      },
      callout: async (_targets, address) => {
        calls.push(address);
        return { verdict: 'valid', reply: '250 ok', unreachable: false, target: 'p:25', ...options.result };
      },
      routeState: () => options.state ?? 'unknown',
      now: () => now,
      log,
      positiveTtlMs: 1000,
      negativeTtlMs: 100,
      backoffMs: 500,
    });
    return { verifier, cache, calls, advance: (ms: number) => (now += ms) };
  }
  const targets = [{ host: 'p', port: 25 }];

  it('asks once, then answers from the cache until the entry expires', async () => {
    const { verifier, calls, advance } = setup();
    assert.equal(await verifier.verify('A@x.test', 'p:25', targets, 'accept'), null);
    assert.equal(await verifier.verify('a@X.TEST', 'p:25', targets, 'accept'), null);
    assert.equal(calls.length, 1);
    advance(1001);
    await verifier.verify('a@x.test', 'p:25', targets, 'accept');
    assert.equal(calls.length, 2);
  });

  it('asks once for concurrent lookups of the same recipient', async () => {
    const { verifier, calls } = setup();
    await Promise.all([1, 2, 3].map(() => verifier.verify('a@x.test', 'p:25', targets, 'accept')));
    assert.equal(calls.length, 1);
  });

  it('does not ask a primary the health service reports down', async () => {
    const { verifier, calls } = setup({ state: 'down' });
    assert.equal(await verifier.verify('a@x.test', 'p:25', targets, 'accept'), null);
    assert.equal((await verifier.verify('a@x.test', 'p:25', targets, 'defer'))?.status, '4.2.0');
    assert.equal(calls.length, 0);
  });

  it('backs off from an unreachable primary for a while', async () => {
    const { verifier, calls, advance } = setup({ result: { verdict: 'unknown', unreachable: true } });
    assert.equal((await verifier.verify('a@x.test', 'p:25', targets, 'defer'))?.code, 450);
    assert.equal((await verifier.verify('b@x.test', 'p:25', targets, 'defer'))?.code, 450);
    assert.equal(calls.length, 1);
    advance(501);
    await verifier.verify('c@x.test', 'p:25', targets, 'defer');
    assert.equal(calls.length, 2);
  });

  it('caches a refusal as 550 5.1.1', async () => {
    const { verifier, cache } = setup({ result: { verdict: 'invalid', reply: '550 5.1.1 no such user' } });
    assert.deepEqual(await verifier.verify('nobody@x.test', 'p:25', targets, 'accept'), { code: 550, status: '5.1.1', text: '<nobody@x.test>: Recipient address rejected: User unknown' });
    assert.equal(cache.get('verify:nobody@x.test')?.value, 'invalid');
  });
});

describe('Received header with TLS', () => {
  it('shows the TLS version and cipher as a comment after the from clause', () => {
    const header = receivedHeader({
      helo: 'client.origin.test',
      clientAddress: '192.0.2.1',
      by: 'backup.example.test',
      protocol: 'ESMTPS',
      id: 'ID1',
      recipients: ['a@example.test'],
      date: new Date(Date.UTC(2026, 10, 28, 9, 22, 52)),
      tls: { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384' },
    });
    assert.equal(
      header,
      'Received: from client.origin.test ([192.0.2.1])\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tby backup.example.test (backupmx) with ESMTPS id ID1\r\n\tfor <a@example.test>; Sat, 28 Nov 2026 09:22:52 +0000\r\n',
    );
  });
});
