/**
 * The walls of the admin API and the console, tried as a new user would, against `npm start` with no
 * ADMIN_TOKEN (loopback only): what a web page open in the operator's browser could send (a
 * text/plain POST from another Origin, a DNS-rebinding Host), CORS, the console's loopback rule;
 * then the bulk operations of the API and the CLI.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { verifyPassword } from '../services/spool/src/console/password.ts';
import { sendMessages, type Sent } from './support/mail.ts';
import { ROOT, spawnService, waitReady, type Service } from './support/processes.ts';
import { freePort, tempDir } from './support/util.ts';

function cli(args: string[], env: Record<string, string>, input?: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = execFile(process.execPath, [join(ROOT, 'bin/backupmx.js'), ...args], { env: { PATH: process.env.PATH ?? '', ...env } }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
    child.stdin?.end(input ?? '');
  });
}

/** A raw HTTP request (fetch will not send a foreign Host header). */
function raw(port: number, method: string, path: string, headers: Record<string, string>, body = ''): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => (text += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('admin API and console walls, npm start without ADMIN_TOKEN', () => {
  const dir = tempDir();
  let system: Service;
  let port: number;
  let sent: Sent[];
  const held = async () => ((await (await fetch(`http://127.0.0.1:${port}/api/queue?state=held`)).json()) as { total: number }).total;

  before(async () => {
    const smtpPort = await freePort();
    system = spawnService(
      'walls-all',
      'all',
      {
        RELAY_DOMAINS: 'example.test, example.org',
        PRIMARY: `127.0.0.1:${await freePort()}`,
        SMTP_HOST: '127.0.0.1',
        SMTP_PORT: String(smtpPort),
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(await freePort()),
        SMTP_HOSTNAME: 'backup.example.test',
        PUBLIC_URL: 'https://backupmx.example.net',
        DATA_DIR: join(dir.path, 'data'),
        SENDER_AUTH: 'false',
      },
      join(dir.path, 'logs'),
    );
    await waitReady(system);
    port = system.httpPort;
    sent = await sendMessages(smtpPort, 6, { to: (index) => [index < 4 ? `user${index}@example.test` : `user${index}@example.org`] });
    for (const message of sent) assert.ok(message.id, message.reply);
  });
  after(async () => {
    await system.stop('SIGKILL');
    dir.remove();
  });

  it('refuses the cross-site text/plain hold that used to work (403), and a text/plain body from anywhere (415)', async () => {
    const id = sent[0]?.id as string;
    const host = `127.0.0.1:${port}`;
    const foreign = await raw(port, 'POST', `/api/queue/${id}/hold`, { host, 'content-type': 'text/plain', origin: 'http://evil.example' }, '{}');
    assert.equal(foreign.status, 403);
    assert.deepEqual(JSON.parse(foreign.body), { error: 'cross-site request refused: Origin "http://evil.example" is not this server' });
    const referred = await raw(port, 'POST', `/api/queue/${id}/hold`, { host, referer: 'http://evil.example/page' });
    assert.equal(referred.status, 403, 'a Referer from elsewhere, without Origin');
    const plain = await raw(port, 'POST', `/api/queue/${id}/hold`, { host, 'content-type': 'text/plain' }, '{}');
    assert.equal(plain.status, 415);
    assert.deepEqual(JSON.parse(plain.body), { error: 'Content-Type text/plain is not accepted: send application/json' });
    const form = await raw(port, 'POST', '/api/flush', { host, 'content-type': 'application/x-www-form-urlencoded' }, 'domain=example.test');
    assert.equal(form.status, 415);
    assert.equal(await held(), 0, 'nothing was held');
    const ours = await raw(port, 'POST', `/api/queue/${id}/hold`, { host, 'content-type': 'application/json', origin: `http://${host}` }, '{}');
    assert.equal(ours.status, 200, 'our own origin, JSON: fine');
    const publicName = await raw(port, 'POST', `/api/queue/${id}/release`, { host: 'backupmx.example.net', 'content-type': 'application/json', origin: 'https://backupmx.example.net' }, '{}');
    assert.equal(publicName.status, 200, 'PUBLIC_URL behind a TLS proxy');
  });

  it('answers no Host that is not ours (DNS rebinding), on the API and the console', async () => {
    for (const path of ['/api/queue', `/api/queue/${sent[1]?.id}/raw`, '/api/status', '/', '/queue', `/queue/${sent[1]?.id}/raw`]) {
      const rebound = await raw(port, 'GET', path, { host: `evil.example:${port}` });
      assert.equal(rebound.status, 400, path);
      assert.ok(!rebound.body.includes('Received:') && !rebound.body.includes(sent[1]?.id as string), `${path}: nothing of the queue`);
      assert.match(rebound.body, /unknown host name (\\"|&quot;)evil\.example:\d+(\\"|&quot;)/, path);
    }
    for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`, 'backup.example.test', `BACKUPMX.example.net:${port}`]) {
      assert.equal((await raw(port, 'GET', '/api/queue', { host })).status, 200, host);
    }
    assert.equal((await raw(port, 'GET', '/metrics', { host: 'spool:8025' })).status, 200, 'metrics and health stay open to any name (Prometheus in compose)');
  });

  it('sends no CORS headers, not even to a preflight', async () => {
    const preflight = await raw(port, 'OPTIONS', `/api/queue/${sent[0]?.id}/hold`, { host: `127.0.0.1:${port}`, origin: 'http://evil.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type' });
    const answer = await raw(port, 'GET', '/api/queue', { host: `127.0.0.1:${port}`, origin: 'http://evil.example' });
    for (const response of [preflight, answer]) {
      assert.deepEqual(Object.keys(response.headers).filter((name) => name.startsWith('access-control-')), []);
    }
    assert.match(String(answer.headers['content-security-policy']), /default-src 'none'/);
  });

  it('the console answers a loopback client as the operator, but not one a proxy forwarded, and sets a strict session cookie', async () => {
    const page = await raw(port, 'GET', '/', { host: `127.0.0.1:${port}` });
    assert.equal(page.status, 200);
    assert.match(page.body, /<h1>Overview<\/h1>/);
    assert.match(String(page.headers['content-security-policy']), /^default-src 'self';script-src 'self';style-src 'self';img-src 'self' data:;/);
    assert.match(String(page.headers['set-cookie']), /^backupmx_session=[\w-]{43}; Max-Age=28800; Path=\/; Expires=[^;]+; HttpOnly; SameSite=Strict$/);
    const tls = await raw(port, 'GET', '/', { host: 'backupmx.example.net' });
    assert.match(String(tls.headers['set-cookie']), /; Secure; SameSite=Strict$/, 'by the name of the https PUBLIC_URL: Secure');
    const proxied = await raw(port, 'GET', '/', { host: `127.0.0.1:${port}`, 'x-forwarded-for': '192.0.2.9' });
    assert.equal(proxied.status, 403);
    assert.match(proxied.body, /answers only on loopback while ADMIN_TOKEN is not set and no domain has VIEWERS/);
    assert.equal((await raw(port, 'GET', '/api/queue', { host: `127.0.0.1:${port}`, 'x-forwarded-for': '192.0.2.9' })).status, 403);
  });

  it('bulk operations of the API: by ids, by filter, a dry run that counts; bad bodies get 400 naming the problem', async () => {
    const post = async (path: string, body: unknown) => {
      const response = await fetch(`http://127.0.0.1:${port}/api${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      return { status: response.status, body: (await response.json()) as Record<string, unknown> };
    };
    const dry = await post('/queue/hold', { filter: { domain: 'example.test' }, dryRun: true });
    assert.equal(dry.status, 200);
    assert.equal(dry.body.matched, 4);
    assert.equal(await held(), 0, 'a dry run changes nothing');
    const hold = await post('/queue/hold', { filter: { domain: 'example.test', before: dry.body.before } });
    assert.deepEqual({ ...hold.body, ids: new Set(hold.body.ids as string[]) }, { action: 'hold', matched: 4, messages: 4, deliveries: 4, ids: new Set(sent.slice(0, 4).map((message) => message.id)) });
    assert.equal(await held(), 4);
    const release = await post('/queue/release', { ids: [sent[0]?.id, sent[1]?.id, '0000NOSUCHID0000'] });
    assert.deepEqual(release.body, { action: 'release', matched: 3, messages: 2, deliveries: 2, ids: [sent[0]?.id, sent[1]?.id] });
    const retry = await post('/queue/retry', { filter: { state: 'queued' } });
    assert.equal(retry.body.messages, 4, 'the two released and the two of example.org');
    const removed = await post('/queue/delete', { ids: [sent[5]?.id] });
    assert.equal(removed.body.messages, 1);
    assert.equal((await fetch(`http://127.0.0.1:${port}/api/queue/${sent[5]?.id}`)).status, 404);
    for (const [body, error] of [
      [{}, 'ids: give either ids or a filter ({} for every message)'],
      [{ ids: [], filter: {} }, 'ids: expected at least one queue id'],
      [{ ids: ['bad id'] }, 'ids.0: expected queue ids'],
      [{ filter: { colour: 'red' } }, 'filter: unknown parameter colour'],
      [{ filter: { state: 'lost' } }, 'filter.state: expected queued, held, delivered, failed or waiting'],
      [{ ids: [sent[0]?.id], dryRun: true }, 'dryRun: only counts the messages of a filter'],
    ] as const) {
      const answer = await post('/queue/hold', body);
      assert.deepEqual([answer.status, answer.body], [400, { error }], JSON.stringify(body));
    }
  });

  it('the CLI: bulk commands by filter and ids, a dry run, hash-password; every POST it sends is JSON', async () => {
    const env = { BACKUPMX_API: `http://127.0.0.1:${port}` };
    const dry = await cli(['hold', '--domain', 'example.org', '--dry-run'], env);
    assert.equal(dry.code, 0, dry.stderr);
    assert.match(dry.stdout, /^would hold 1 message \(received up to \d{4}-\d\d-\d\dT[\d:.]+Z\)\n$/);
    const hold = await cli(['hold', '--domain', 'example.org'], env);
    assert.deepEqual([hold.code, hold.stdout], [0, 'held: 1 message (1 delivery) of 1 matching\n']);
    const release = await cli(['release', sent[4]?.id as string, sent[2]?.id as string], env);
    assert.deepEqual([release.code, release.stdout], [0, 'released: 2 messages (2 deliveries) of 2 matching\n']);
    const all = await cli(['retry', '--all'], env);
    assert.match(all.stdout, /^due now: \d+ messages \(\d+ deliveries\) of 5 matching\n$/);
    const usage = await cli(['delete'], env);
    assert.equal(usage.code, 64);

    // What the CLI sends, seen by a server that records it.
    const seen: Array<{ method: string; url: string; type: string | undefined; body: string }> = [];
    const recorder = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', type: req.headers['content-type'], body });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"id":"X","deliveries":1,"matched":1,"messages":1}');
      });
    });
    await new Promise<void>((resolve) => recorder.listen(0, '127.0.0.1', resolve));
    try {
      const to = { BACKUPMX_API: `http://127.0.0.1:${(recorder.address() as AddressInfo).port}` };
      await cli(['hold', 'X'], to);
      await cli(['flush'], to);
      await cli(['hold', '--state', 'queued'], to);
      await cli(['replay', 'X'], to);
    } finally {
      recorder.close();
    }
    assert.deepEqual(seen, [
      { method: 'POST', url: '/api/queue/X/hold', type: 'application/json', body: '{}' },
      { method: 'POST', url: '/api/flush', type: 'application/json', body: '{}' },
      { method: 'POST', url: '/api/queue/hold', type: 'application/json', body: '{"filter":{"state":"queued"}}' },
      { method: 'POST', url: '/api/dead/X/replay', type: 'application/json', body: '{}' },
    ]);

    const hashed = await cli(['hash-password'], {}, 'a viewer password\n');
    assert.equal(hashed.code, 0, hashed.stderr);
    assert.equal(await verifyPassword('a viewer password', hashed.stdout.trim()), true);
    const short = await cli(['hash-password'], {}, 'short\n');
    assert.deepEqual([short.code, short.stderr], [64, 'backupmx: a password needs at least 8 characters\n']);
  });
});
