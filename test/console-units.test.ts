/** The web console's and the API walls' pure decisions, the password hashes, the HTML cleaning, the sessions. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { parsePasswordHash } from '../shared/src/rules/password-hash.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { hostAllowed, jsonBodyProblem, originAllowed, wallSettings } from '../services/spool/src/http-walls.ts';
import { filterFields, listFilterOf } from '../services/spool/src/queue-filter.ts';
import { scopeFilter, visibleMessage, type Principal } from '../services/spool/src/console/access.ts';
import { sameToken } from '../services/spool/src/console/csrf.ts';
import { cleanHtml, headerSection } from '../services/spool/src/console/message-view.ts';
import { hashPassword, verifyPassword } from '../services/spool/src/console/password.ts';
import { createSessions } from '../services/spool/src/console/sessions.ts';
import { createSignInLimits, waitMs } from '../services/spool/src/console/sign-in-limits.ts';
import { z } from 'zod';
import { tempDir } from './support/util.ts';

describe('walls: Host, Origin, JSON bodies', () => {
  const names = ['backup.example.test', 'backupmx.example.com'];
  it('answers only Host names that are ours: IP literals, localhost, SMTP_HOSTNAME, PUBLIC_URL names', () => {
    for (const host of ['127.0.0.1:8025', '127.0.0.1', '[::1]:8025', '192.0.2.10:8025', 'localhost:8025', 'LOCALHOST', 'app.localhost:1', 'backup.example.test:8025', 'BACKUPMX.example.com', 'backupmx.example.com.:443']) {
      assert.equal(hostAllowed(host, names), true, host);
    }
    for (const host of ['evil.example:8025', 'evil.example', '127.0.0.1.nip.io:8025', 'example.test', 'backup.example.test.evil.example', '', undefined, 'a b', 'x@127.0.0.1', '127.0.0.1/x']) {
      assert.equal(hostAllowed(host, names), false, String(host));
    }
  });

  it('lets a change through only from our own origin, PUBLIC_URL, or no browser at all', () => {
    const publicOrigins = ['https://backupmx.example.com'];
    assert.equal(originAllowed('http://127.0.0.1:8025', undefined, '127.0.0.1:8025', publicOrigins), true);
    assert.equal(originAllowed('https://backupmx.example.com', undefined, 'backupmx.example.com', publicOrigins), true);
    assert.equal(originAllowed(undefined, 'http://localhost:8025/queue?x=1', 'localhost:8025', publicOrigins), true, 'Referer without Origin');
    assert.equal(originAllowed(undefined, undefined, '127.0.0.1:8025', publicOrigins), true, 'the CLI, curl');
    assert.equal(originAllowed('http://evil.example', undefined, '127.0.0.1:8025', publicOrigins), false);
    assert.equal(originAllowed('http://127.0.0.1:9999', undefined, '127.0.0.1:8025', publicOrigins), false, 'another port is another origin');
    assert.equal(originAllowed('null', undefined, '127.0.0.1:8025', publicOrigins), false, 'sandboxed frames and data: URLs');
    assert.equal(originAllowed(undefined, 'http://evil.example/page', '127.0.0.1:8025', publicOrigins), false);
    assert.equal(originAllowed('ftp://127.0.0.1:8025', undefined, '127.0.0.1:8025', publicOrigins), false);
  });

  it('takes API bodies as application/json only', () => {
    assert.equal(jsonBodyProblem('POST', 'application/json', true), null);
    assert.equal(jsonBodyProblem('POST', 'application/json; charset=utf-8', true), null);
    assert.equal(jsonBodyProblem('POST', undefined, false), null, 'no body at all');
    assert.equal(jsonBodyProblem('GET', 'text/plain', true), null);
    assert.equal(jsonBodyProblem('POST', 'text/plain', false), 'Content-Type text/plain is not accepted: send application/json');
    assert.equal(jsonBodyProblem('POST', 'application/x-www-form-urlencoded', true), 'Content-Type application/x-www-form-urlencoded is not accepted: send application/json');
    assert.equal(jsonBodyProblem('DELETE', 'multipart/form-data; boundary=x', true), 'Content-Type multipart/form-data is not accepted: send application/json');
    assert.equal(jsonBodyProblem('POST', undefined, true), 'send the request body as Content-Type: application/json');
  });

  it('takes names and origins from SMTP_HOSTNAME and PUBLIC_URL', () => {
    assert.deepEqual(wallSettings({ SMTP_HOSTNAME: 'MX2.Example.test.', PUBLIC_URL: ['https://Console.Example.com/backupmx/', 'http://10.0.0.5:8025'] }), {
      names: ['mx2.example.test', 'console.example.com', '10.0.0.5'],
      publicOrigins: ['https://console.example.com', 'http://10.0.0.5:8025'],
    });
  });
});

describe('console: who sees what', () => {
  const operator: Principal = { role: 'operator', user: 'admin' };
  const carol: Principal = { role: 'viewer', user: 'carol@example.org', domain: 'example.org' };
  const delivery = (recipient: string, state: 'queued' | 'held' | 'delivered' | 'failed') => ({ messageId: 'M1', recipient, route: 'r', state, attempts: 0, nextAttemptAt: 0, lastAttemptAt: null, lastReply: null, lastNextHop: null, settledAt: null });
  const detail = (states: Record<string, 'queued' | 'held' | 'delivered' | 'failed'>) => {
    const rcptTo = Object.keys(states);
    return {
      message: { id: 'M1', mailFrom: 'a@origin.test', recipients: rcptTo, envelope: { mailFrom: 'a@origin.test', rcptTo, dsn: Object.fromEntries(rcptTo.map((r) => [r, { notify: ['FAILURE'] }])) }, size: 10, receivedAt: 0, trace: {}, delayWarnedAt: null },
      deliveries: rcptTo.map((r) => delivery(r, states[r] as 'queued')),
      attempts: rcptTo.map((r) => ({ recipient: r, at: 1, nextHop: 'h', result: 'deferred' as const, reply: '451' })),
    };
  };

  it('a viewer lists only what waits for their domain, whatever the filter asked', () => {
    assert.deepEqual(scopeFilter(carol, { domain: 'example.test', state: 'delivered', sender: 'x', limit: 5 }), { sender: 'x', limit: 5, domain: 'example.org', state: ['queued', 'held'] });
    assert.deepEqual(scopeFilter(operator, { domain: 'example.test' }), { domain: 'example.test' });
  });

  it('a viewer sees only the recipients, attempts and DSN parameters of their domain', () => {
    const shown = visibleMessage(carol, detail({ 'carol@example.org': 'queued', 'bob@example.test': 'queued', 'dave@EXAMPLE.ORG': 'held' }));
    assert.deepEqual(shown?.message.recipients, ['carol@example.org', 'dave@EXAMPLE.ORG']);
    assert.deepEqual(shown?.message.envelope.rcptTo, ['carol@example.org', 'dave@EXAMPLE.ORG']);
    assert.deepEqual(Object.keys(shown?.message.envelope.dsn ?? {}), ['carol@example.org', 'dave@EXAMPLE.ORG']);
    assert.deepEqual(shown?.deliveries.map((d) => d.recipient), ['carol@example.org', 'dave@EXAMPLE.ORG']);
    assert.deepEqual(shown?.attempts?.map((a) => a.recipient), ['carol@example.org', 'dave@EXAMPLE.ORG']);
    assert.equal(visibleMessage(operator, detail({ 'bob@example.test': 'delivered' }))?.deliveries.length, 1);
  });

  it('a viewer does not see mail of another domain, nor mail already delivered to theirs', () => {
    assert.equal(visibleMessage(carol, detail({ 'bob@example.test': 'queued' })), null);
    assert.equal(visibleMessage(carol, detail({ 'carol@example.org': 'delivered', 'bob@example.test': 'queued' })), null);
    assert.equal(visibleMessage(carol, detail({ 'carol@sub.example.org': 'queued' })), null, 'a subdomain is another domain');
  });
});

describe('console: CSRF tokens, sign-in slow-down', () => {
  it('compares tokens exactly', () => {
    assert.equal(sameToken('abc', 'abc'), true);
    for (const given of ['abd', 'ab', 'abcd', '', undefined, 5, ['abc']]) assert.equal(sameToken(given, 'abc'), false, String(given));
    assert.equal(sameToken('', ''), false, 'an empty expected token never matches');
    assert.equal(sameToken('abc', undefined), false);
  });

  it('five failures are free, then each attempt waits 15 s, 30 s, 1 min ... after the last failure; forgotten after 15 minutes', () => {
    const limits = createSignInLimits();
    for (let i = 0; i < 5; i++) {
      assert.equal(limits.wait('192.0.2.1', 1000 + i), 0);
      limits.fail('192.0.2.1', 1000 + i);
    }
    assert.equal(limits.wait('192.0.2.1', 1004), 15_000);
    assert.equal(limits.wait('192.0.2.1', 16_004), 0);
    assert.equal(limits.wait('192.0.2.2', 1004), 0, 'per client address');
    limits.fail('192.0.2.1', 16_004);
    assert.equal(limits.wait('192.0.2.1', 16_004), 30_000);
    assert.equal(waitMs({ failures: 30, last: 0 }, 1), 15 * 60_000 - 1, 'at most 15 minutes');
    assert.equal(waitMs({ failures: 30, last: 0 }, 15 * 60_000), 0);
    limits.fail('192.0.2.1', 16_004 + 15 * 60_000);
    assert.equal(limits.wait('192.0.2.1', 16_004 + 15 * 60_000), 0, 'a failure long after the last starts a new count');
  });
});

describe('queue filter', () => {
  const parse = (input: Record<string, string>) => z.strictObject(filterFields).parse(input);
  it('turns the parameters into the store filter; waiting is queued or held; age and before bound the arrival', () => {
    const now = Date.parse('2026-12-01T12:00:00Z');
    assert.deepEqual(listFilterOf(parse({ state: 'waiting', domain: 'Example.COM.', sender: '', sort: 'oldest' }), now), { state: ['queued', 'held'], domain: 'example.com', order: 'oldest' });
    assert.deepEqual(listFilterOf(parse({ age: '1h', before: '2026-12-01T11:30:00Z' }), now), { receivedBefore: now - 3_600_000 });
    assert.deepEqual(listFilterOf(parse({ age: '1h', before: '2026-12-01T10:00:00Z' }), now), { receivedBefore: Date.parse('2026-12-01T10:00:00Z') });
    assert.throws(() => parse({ before: 'yesterday' }), /expected a time such as/);
    assert.throws(() => parse({ sort: 'random' }), /expected newest or oldest/);
  });
});

describe('passwords of domain viewers', () => {
  it('hash-password output verifies, a wrong password does not, an unknown user never does', async () => {
    const hash = await hashPassword('correct horse battery');
    assert.match(hash, /^\$scrypt\$ln=15,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}$/);
    assert.notEqual(await hashPassword('correct horse battery'), hash, 'a new salt each time');
    assert.equal(await verifyPassword('correct horse battery', hash), true);
    assert.equal(await verifyPassword('correct horse batterY', hash), false);
    assert.equal(await verifyPassword('', undefined), false);
  });

  it('the configuration takes VIEWERS with such hashes and names the key of a bad one', async () => {
    const hash = await hashPassword('a long password');
    const base = { RELAY_DOMAINS: 'example.org', PRIMARY: 'mx.example.org' };
    assert.equal(parsePasswordHash(hash)?.ln, 15);
    assert.equal(parsePasswordHash('$scrypt$ln=40,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'), null, 'absurd cost');
    const dir = tempDir();
    try {
      const { writeFileSync } = await import('node:fs');
      const file = join(dir.path, 'c.yaml');
      writeFileSync(file, `domains:\n  example.org:\n    VIEWERS:\n      carol: '${hash}'\n`);
      assert.equal(loadConfig({ ...base, BACKUPMX_CONFIG: file }).domains['example.org']?.VIEWERS?.carol, hash);
      writeFileSync(file, `domains:\n  example.org:\n    VIEWERS:\n      carol: secret\n`);
      assert.throws(() => loadConfig({ ...base, BACKUPMX_CONFIG: file }), { message: 'domains.example.org.VIEWERS.carol: expected a password hash made by `backupmx hash-password` ($scrypt$ln=...)' });
      writeFileSync(file, `domains:\n  example.org:\n    VIEWERS:\n      'carol smith': '${hash}'\n`);
      assert.throws(() => loadConfig({ ...base, BACKUPMX_CONFIG: file }), { message: 'domains.example.org.VIEWERS.carol smith: expected a user name of letters, digits, dot, dash or underscore' });
    } finally {
      dir.remove();
    }
    assert.throws(() => loadConfig({ ...base, PUBLIC_URL: 'backupmx.example.com' }), { message: 'PUBLIC_URL.0: expected http(s) URLs, comma separated, e.g. https://backupmx.example.com' });
    assert.throws(() => loadConfig({ ...base, CONSOLE: 'maybe' }), { message: 'CONSOLE: expected true or false' });
    assert.equal(loadConfig({ ...base, CONSOLE_SESSION_LIFETIME: '30m' }).CONSOLE_SESSION_LIFETIME, 1_800_000);
  });
});

describe('message HTML is made harmless before it reaches the sandboxed frame', () => {
  it('drops scripts, handlers, style sheets, meta refresh, frames, forms, javascript: links and remote images', () => {
    const crafted = [
      '<meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/refresh">',
      '<link rel="stylesheet" href="http://127.0.0.1:9/style.css">',
      '<style>@import url(http://127.0.0.1:9/import.css); body{background:url(http://127.0.0.1:9/bg.png)}</style>',
      '<base href="http://127.0.0.1:9/">',
      '<script>window.pwned = 1</script>',
      '<p onclick="window.pwned = 2" style="color:red">Hello <b>there</b></p>',
      '<div style="color:blue;background-image:URL( http://127.0.0.1:9/bg.png )">styled</div>',
      '<img src="http://127.0.0.1:9/pixel.png" alt="pixel"><img src="//127.0.0.1:9/p2.png"><img src="x" onerror="window.pwned=3">',
      '<img src="data:image/png;base64,iVBORw0KGgo=" alt="own">',
      '<a href="javascript:window.pwned=4">js</a> <a href="https://example.org/x">link</a>',
      '<iframe src="http://127.0.0.1:9/frame"></iframe><object data="http://127.0.0.1:9/o"></object><form action="http://127.0.0.1:9/f"><input name=a></form>',
      '<svg><image href="http://127.0.0.1:9/svg.png"/></svg>',
    ].join('\n');
    const clean = cleanHtml(crafted);
    for (const bad of ['<script', 'pwned', 'onclick', 'onerror', '<meta', '<link', '<style', '<base', '<iframe', '<object', '<form', '<svg', 'javascript:', '127.0.0.1:9']) assert.ok(!clean.includes(bad), `${bad} in ${clean}`);
    assert.match(clean, /<p style="color:red">Hello <b>there<\/b><\/p>/);
    assert.match(clean, /<div style="color:blue;background-image:none">styled<\/div>/);
    assert.match(clean, /<img alt="pixel" \/><img \/><img \/>/, 'remote, protocol-relative and relative sources are dropped');
    assert.match(clean, /<img alt="own" src="data:image\/png;base64,iVBORw0KGgo=" \/>/);
    assert.match(clean, /<a href="https:\/\/example\.org\/x" target="_blank" rel="noopener noreferrer">link<\/a>/);
  });

  it('shows the header section exactly as stored', () => {
    const { Buffer } = globalThis as unknown as { Buffer: typeof import('node:buffer').Buffer };
    assert.equal(headerSection(Buffer.from('Received: x\r\n\tby y\r\nSubject: hi\r\n\r\nbody\r\n\r\nmore')), 'Received: x\r\n\tby y\r\nSubject: hi');
  });
});

describe('console sessions', () => {
  it('live in the store for their lifetime, end at sign-out, and carry HttpOnly SameSite=Strict cookies (Secure over TLS)', async () => {
    const dir = tempDir();
    const store = await openSqliteStore(join(dir.path, 'spool.sqlite'));
    try {
      const sessions = createSessions(store, 60_000, ['backupmx.example.com']);
      const cookies: Array<[string, string, Record<string, unknown>]> = [];
      const res = { cookie: (name: string, value: string, options: Record<string, unknown>) => cookies.push([name, value, options]), clearCookie: () => {} };
      const request = (cookie: string, headers: Record<string, string> = {}) => ({ secure: false, get: (name: string) => (name === 'cookie' ? cookie : headers[name]) }) as never;
      const made = await sessions.create(request('', { 'x-forwarded-proto': 'https' }), res as never, { role: 'viewer', user: 'carol@example.org', domain: 'example.org' }, 'fp', 1000);
      const [name, token, options] = cookies[0] as [string, string, Record<string, unknown>];
      assert.equal(name, 'backupmx_session');
      assert.deepEqual(options, { httpOnly: true, sameSite: 'strict', secure: true, path: '/', maxAge: 60_000 });
      assert.match(token, /^[A-Za-z0-9_-]{43}$/);
      const found = await sessions.read(request(`backupmx_session=${token}`), 1000 + 59_999);
      assert.deepEqual(found?.session, made);
      assert.equal(await sessions.read(request(`backupmx_session=${token}`), 1000 + 60_000), null, 'expired');
      assert.equal(await sessions.read(request('backupmx_session=forged'), 2000), null);
      await sessions.destroy(request(''), res as never, token, 3000);
      assert.equal(await sessions.read(request(`backupmx_session=${token}`), 3000), null, 'signed out');
      await sessions.create(request(''), res as never, { role: 'operator', user: 'admin' }, 'fp', 1000);
      assert.equal(cookies[1]?.[2].secure, false, 'plain HTTP: not Secure');
      await sessions.create(request('', { host: 'BackupMX.example.com' }), res as never, { role: 'operator', user: 'admin' }, 'fp', 1000);
      assert.equal(cookies[2]?.[2].secure, true, 'the name of an https PUBLIC_URL (a TLS proxy in front)');
    } finally {
      await store.close();
      dir.remove();
    }
  });
});
