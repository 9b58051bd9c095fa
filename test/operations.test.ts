import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { metric } from './support/metrics.ts';
import { startPrimary } from './support/primary.ts';
import { ROOT, spawnService, waitReady, type Service } from './support/processes.ts';
import { queueIdOf, sendMessages, type Sent } from './support/mail.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';
import { startWebhook } from './support/webhook.ts';

const TOKEN = 'test-admin-token-0123456789';

/** Run the `backupmx` command as a shell would (bin/backupmx.js on Node 24). */
function cli(args: string[], env: Record<string, string>): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [join(ROOT, 'bin/backupmx.js'), ...args], { env: { PATH: process.env.PATH ?? '', ...env } }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/**
 * `npm start` with ADMIN_TOKEN, ALERT_WEBHOOK and ALERT_QUEUE_AGE, the primary down while mail
 * arrives: the admin API, the CLI, /metrics and the alerts as an administrator uses them during an
 * outage, then the primary comes back.
 */
describe('operations in one process: admin API, CLI, metrics, alerts', () => {
  const dir = tempDir();
  let system: Service;
  let webhook: Awaited<ReturnType<typeof startWebhook>>;
  let primaryPort: number;
  let smtpPort: number;
  let api: string;
  let sent: Sent[];
  const auth = { authorization: `Bearer ${TOKEN}` };
  const get = async (path: string, headers: Record<string, string> = auth) => {
    const response = await fetch(`${api}${path}`, { headers });
    return { status: response.status, type: response.headers.get('content-type') ?? '', body: (response.headers.get('content-type') ?? '').includes('json') ? await response.json() : await response.text() };
  };
  const send = async (method: string, path: string, body?: string, headers: Record<string, string> = auth) => {
    const response = await fetch(`${api}${path}`, { method, headers: { ...headers, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body } : {}) });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  const cliEnv = () => ({ BACKUPMX_API: `http://127.0.0.1:${system.httpPort}`, ADMIN_TOKEN: TOKEN });

  before(async () => {
    webhook = await startWebhook({ failFirst: 1 });
    [primaryPort, smtpPort] = [await freePort(), await freePort()];
    system = spawnService(
      'ops-all',
      'all',
      {
        RELAY_DOMAINS: 'example.test, example.org',
        PRIMARY: `127.0.0.1:${primaryPort}`,
        SMTP_HOST: '127.0.0.1',
        SMTP_PORT: String(smtpPort),
        HTTP_PORT: String(await freePort()),
        SMTP_HOSTNAME: 'backup.example.test',
        DATA_DIR: join(dir.path, 'data'),
        PROBE_INTERVAL: '300ms',
        PROBE_TIMEOUT: '1s',
        ADMIN_TOKEN: TOKEN,
        ALERT_WEBHOOK: webhook.url,
        ALERT_QUEUE_AGE: '2s',
        TRACE_URL: 'http://jaeger.example.test:16686/trace/{traceId}',
      },
      join(dir.path, 'logs'),
    );
    await waitReady(system);
    api = `http://127.0.0.1:${system.httpPort}/api`;
    sent = await sendMessages(smtpPort, 3, { to: (index) => (index === 2 ? ['carol@example.org'] : [`user${index}@example.test`, 'all@example.test']) });
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as /);
  });
  after(async () => {
    await system.stop('SIGKILL');
    await webhook.close();
    dir.remove();
  });

  it('refuses requests without the bearer token or with a wrong one (401, JSON naming the problem)', async () => {
    const none = await get('/queue', {});
    assert.equal(none.status, 401);
    assert.match((none.body as { error: string }).error, /missing bearer token/);
    const wrong = await get('/queue', { authorization: 'Bearer not-the-token' });
    assert.equal(wrong.status, 401);
    assert.deepEqual(wrong.body, { error: 'wrong bearer token' });
    assert.equal((await get('/queue', { authorization: `Basic ${TOKEN}` })).status, 401);
    assert.equal((await send('POST', '/flush', '{}', {})).status, 401);
    assert.equal((await get('/queue')).status, 200);
  });

  it('lists the queue with filters and paging, and answers bad filters with 400 naming the parameter', async () => {
    const all = (await get('/queue')).body as { total: number; items: Array<{ id: string; from: string; recipients: string[]; deliveries: Array<{ state: string; route: string }> }> };
    assert.equal(all.total, 3);
    assert.deepEqual(new Set(all.items.map((item) => item.id)), new Set(sent.map((message) => message.id)));
    for (const item of all.items) for (const delivery of item.deliveries) assert.equal(delivery.route, `127.0.0.1:${primaryPort}`);
    const total = async (query: string) => ((await get(`/queue?${query}`)).body as { total: number }).total;
    assert.equal(await total('domain=example.org'), 1);
    assert.equal(await total('domain=EXAMPLE.TEST'), 2);
    assert.equal(await total('recipient=user1@'), 1);
    assert.equal(await total(`sender=sender0@origin.test`), 1);
    assert.equal(await total('state=queued'), 3);
    assert.equal(await total('state=held'), 0);
    assert.equal(await total('age=1h'), 0);
    const page = (await get('/queue?limit=2&offset=2')).body as { total: number; items: unknown[] };
    assert.equal(page.total, 3);
    assert.equal(page.items.length, 1);

    for (const [query, error] of [
      ['state=lost', 'state: expected queued, held, delivered, failed or waiting'],
      ['age=soon', 'age: expected a minimum age such as 30s, 5m, 1h or 5d'],
      ['limit=0', 'limit: expected a whole number from 1 to 1000'],
      ['limit=ten', 'limit: expected a whole number from 1 to 1000'],
      ['offset=-1', 'offset: expected a whole number from 0 to 1000000000'],
      ['colour=red', 'unknown parameter colour'],
    ] as const) {
      const answer = await get(`/queue?${query}`);
      assert.equal(answer.status, 400, query);
      assert.deepEqual(answer.body, { error }, query);
    }
  });

  it('shows one message: envelope, per-recipient state, attempts, raw bytes; 404 for an unknown id, 400 for a bad one', async () => {
    const id = sent[0]?.id as string;
    const detail = (await get(`/queue/${id}`)).body as {
      id: string;
      envelope: { mailFrom: string; rcptTo: string[] };
      deliveries: Array<{ recipient: string; state: string }>;
      attempts: unknown[];
      traceId: string | null;
    };
    assert.equal(detail.id, id);
    assert.deepEqual(detail.envelope.rcptTo, ['user0@example.test', 'all@example.test']);
    assert.equal(detail.envelope.mailFrom, 'sender0@origin.test');
    assert.deepEqual(detail.deliveries.map((delivery) => [delivery.recipient, delivery.state]), [['user0@example.test', 'queued'], ['all@example.test', 'queued']]);
    assert.ok(Array.isArray(detail.attempts));
    assert.equal(detail.traceId, null, 'no trace without OTEL_* settings');

    const raw = await get(`/queue/${id}/raw`);
    assert.equal(raw.status, 200);
    assert.match(raw.type, /^message\/rfc822/);
    assert.match(raw.body as string, new RegExp(`^Received: from [^]*id ${id}`));
    assert.ok((raw.body as string).endsWith(sent[0]?.raw as string), 'the stored bytes below our Received header are the sent ones');

    for (const path of ['/queue/0000NOSUCHID0000', '/queue/0000NOSUCHID0000/raw']) {
      const answer = await get(path);
      assert.equal(answer.status, 404, path);
      assert.deepEqual(answer.body, { error: 'no message 0000NOSUCHID0000 in the queue' });
    }
    for (const action of ['retry', 'hold', 'release']) assert.equal((await send('POST', `/queue/0000NOSUCHID0000/${action}`)).status, 404, action);
    assert.equal((await send('DELETE', '/queue/0000NOSUCHID0000')).status, 404);
    const bad = await get('/queue/not%20an%20id');
    assert.equal(bad.status, 400);
    assert.deepEqual(bad.body, { error: 'id: not a queue id: "not an id"' });
    const undecodable = await get('/queue/%E0%A4%A');
    assert.equal(undecodable.status, 400, 'a malformed percent-encoding is bad input, not a server error');
    assert.deepEqual(undecodable.body, { error: "Failed to decode param '%E0%A4%A'" });
    assert.equal((await get('/nothing-here')).status, 404);
  });

  it('holds, releases, retries and deletes a message; a second hold or release is a 409', async () => {
    const id = sent[1]?.id as string;
    assert.deepEqual(await send('POST', `/queue/${id}/hold`), { status: 200, body: { id, action: 'hold', deliveries: 2 } });
    const again = await send('POST', `/queue/${id}/hold`);
    assert.equal(again.status, 409);
    assert.deepEqual(again.body, { error: `message ${id}: no queued delivery to hold` });
    assert.equal(((await get('/queue?state=held')).body as { total: number }).total, 1);
    assert.equal((await send('POST', `/queue/${id}/retry`)).status, 409, 'a held message is not retried');
    assert.deepEqual(await send('POST', `/queue/${id}/release`), { status: 200, body: { id, action: 'release', deliveries: 2 } });
    assert.equal((await send('POST', `/queue/${id}/release`)).status, 409);
    assert.deepEqual(await send('POST', `/queue/${id}/retry`), { status: 200, body: { id, action: 'retry', deliveries: 2 } });

    const doomed = sent[2]?.id as string;
    assert.deepEqual(await send('DELETE', `/queue/${doomed}`), { status: 200, body: { id: doomed, deleted: true } });
    assert.equal((await get(`/queue/${doomed}`)).status, 404);
    assert.equal((await send('DELETE', `/queue/${doomed}`)).status, 404);
  });

  it('answers flush requests, and bad ones with 400', async () => {
    assert.deepEqual(await send('POST', '/flush', '{}'), { status: 202, body: { flushed: 'all' } });
    assert.deepEqual(await send('POST', '/flush', '{"domain":"Example.TEST"}'), { status: 202, body: { flushed: `127.0.0.1:${primaryPort}`, domain: 'Example.TEST' } });
    assert.deepEqual(await send('POST', '/flush', '{"domain":"elsewhere.test"}'), { status: 400, body: { error: 'domain: elsewhere.test is not one of RELAY_DOMAINS' } });
    assert.deepEqual(await send('POST', '/flush', '{"domain":5}'), { status: 400, body: { error: 'domain: Invalid input: expected string, received number' } });
    assert.deepEqual(await send('POST', '/flush', '{"domains":"x"}'), { status: 400, body: { error: 'unknown parameter domains' } });
    assert.deepEqual(await send('POST', '/flush', '{"domain":'), { status: 400, body: { error: 'the request body is not valid JSON' } });
  });

  it('counts what happened on /metrics: connections, accepted, refusals by reason, spool depth', async () => {
    const port = system.httpPort;
    assert.equal(await metric(port, 'backupmx_messages_accepted_total'), 3);
    const session = await openSession(smtpPort);
    try {
      await session.command('EHLO client.test');
      await session.command('MAIL FROM:<a@origin.test>');
      assert.match(await session.command('RCPT TO:<someone@elsewhere.test>'), /^550 5\.7\.1 /);
    } finally {
      session.close();
    }
    assert.equal(await metric(port, 'backupmx_smtp_rejections_total', { stage: 'rcpt', code: '550', status: '5.7.1' }), 1);
    assert.ok(((await metric(port, 'backupmx_smtp_connections_total')) ?? 0) >= 2);
    assert.equal(await metric(port, 'backupmx_spool_messages'), 2, 'one of three was deleted');
    assert.equal(await metric(port, 'backupmx_spool_queued', { route: `127.0.0.1:${primaryPort}` }), 4);
    assert.ok(((await metric(port, 'backupmx_spool_oldest_queued_age_seconds')) ?? 0) > 0);
    // Absent while the health monitor has not decided yet (PROBE_FAILURES probes); then 0.
    await waitFor('backupmx_primary_up 0', async () => (await metric(port, 'backupmx_primary_up', { target: `127.0.0.1:${primaryPort}` })) === 0, 10_000);
  });

  it('the CLI: a mailq-like queue, show, status; one clear line for a wrong token or an unreachable API', async () => {
    const queue = await cli(['queue'], cliEnv());
    assert.equal(queue.code, 0, queue.stderr);
    assert.match(queue.stdout, /^-Queue ID- /);
    for (const id of [sent[0]?.id, sent[1]?.id]) assert.match(queue.stdout, new RegExp(`^${id} +\\d+ `, 'm'));
    assert.match(queue.stdout, /^ +user0@example\.test$/m);
    assert.match(queue.stdout, /^-- 2 Kbytes in 2 Requests\.$/m);

    const show = await cli(['show', sent[0]?.id as string], cliEnv());
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, new RegExp(`^Queue ID: +${sent[0]?.id}$`, 'm'));
    assert.match(show.stdout, /^ {2}user0@example\.test {2}queued {2}via 127\.0\.0\.1:\d+/m);

    const status = await cli(['status'], cliEnv());
    assert.equal(status.code, 0, status.stderr);
    assert.match(status.stdout, new RegExp(`^ {2}127\\.0\\.0\\.1:${primaryPort} +DOWN `, 'm'));
    assert.match(status.stdout, /^ {2}2 messages waiting; 4 deliveries queued/m);

    const hold = await cli(['hold', sent[0]?.id as string], cliEnv());
    assert.deepEqual([hold.code, hold.stdout], [0, `${sent[0]?.id}: held (2 deliveries)\n`]);
    const release = await cli(['release', sent[0]?.id as string], cliEnv());
    assert.deepEqual([release.code, release.stdout], [0, `${sent[0]?.id}: released (2 deliveries)\n`]);
    const retry = await cli(['retry', sent[0]?.id as string], cliEnv());
    assert.deepEqual([retry.code, retry.stdout], [0, `${sent[0]?.id}: due now (2 deliveries)\n`]);
    const flush = await cli(['flush', 'example.test'], cliEnv());
    assert.deepEqual([flush.code, flush.stdout], [0, `flush requested for example.test (route 127.0.0.1:${primaryPort})\n`]);
    const flushAll = await cli(['flush'], cliEnv());
    assert.deepEqual([flushAll.code, flushAll.stdout], [0, 'flush requested for every route\n']);
    const foreign = await cli(['flush', 'elsewhere.test'], cliEnv());
    assert.deepEqual([foreign.code, foreign.stderr], [1, 'backupmx: domain: elsewhere.test is not one of RELAY_DOMAINS\n']);
    const gone = await cli(['delete', '0000NOSUCHID0000'], cliEnv());
    assert.deepEqual([gone.code, gone.stderr], [1, 'backupmx: no message 0000NOSUCHID0000 in the queue\n']);

    const unknown = await cli(['show', '0000NOSUCHID0000'], cliEnv());
    assert.deepEqual([unknown.code, unknown.stderr], [1, 'backupmx: no message 0000NOSUCHID0000 in the queue\n']);
    const wrong = await cli(['queue'], { ...cliEnv(), ADMIN_TOKEN: 'nope' });
    assert.deepEqual([wrong.code, wrong.stderr], [77, 'backupmx: unauthorized: wrong bearer token; ADMIN_TOKEN does not match the server\n']);
    const missing = await cli(['queue'], { BACKUPMX_API: cliEnv().BACKUPMX_API });
    assert.equal(missing.code, 77);
    assert.match(missing.stderr, /^backupmx: unauthorized: missing bearer token.*; set ADMIN_TOKEN\n$/);
    const closed = await freePort();
    const unreachable = await cli(['status'], { BACKUPMX_API: `http://127.0.0.1:${closed}`, ADMIN_TOKEN: TOKEN });
    assert.deepEqual([unreachable.code, unreachable.stderr], [69, `backupmx: cannot reach the admin API at http://127.0.0.1:${closed} (ECONNREFUSED); is the spool running? set BACKUPMX_API\n`]);
    const usage = await cli(['frobnicate'], cliEnv());
    assert.equal(usage.code, 64);
    assert.match(usage.stderr, /^backupmx: unknown command "frobnicate"\nusage: backupmx COMMAND/);
  });

  it('lists and replays dead letters of DATA_DIR/dead', async () => {
    assert.deepEqual((await get('/dead')).body, { total: 0, items: [] });
    // What the in-process broker wrote for a message the spool could not read earlier, since fixed.
    const deadDir = join(dir.path, 'data', 'dead');
    mkdirSync(deadDir, { recursive: true });
    writeFileSync(join(deadDir, 'DEAD0000000000001.eml'), 'Subject: back from the dead\r\n\r\nbody\r\n');
    writeFileSync(join(deadDir, 'DEAD0000000000001.json'), JSON.stringify({ id: 'DEAD0000000000001', envelope: { mailFrom: 'z@origin.test', rcptTo: ['zed@example.test'] }, receivedAt: Date.now() }));
    const dead = (await get('/dead')).body as { total: number; items: Array<{ id: string; envelope: unknown; size: number }> };
    assert.equal(dead.total, 1);
    assert.deepEqual(dead.items[0]?.envelope, { mailFrom: 'z@origin.test', rcptTo: ['zed@example.test'] });
    assert.equal((await send('POST', '/dead/NOPE/replay')).status, 404);
    assert.equal((await send('POST', '/dead/..%2Fx/replay')).status, 400);
    assert.deepEqual(await send('POST', '/dead/DEAD0000000000001/replay'), { status: 200, body: { id: 'DEAD0000000000001', replayed: true } });
    assert.deepEqual(readdirSync(deadDir), []);
    const stored = (await get('/queue/DEAD0000000000001')).body as { deliveries: Array<{ recipient: string; state: string }> };
    assert.deepEqual(stored.deliveries.map((delivery) => [delivery.recipient, delivery.state]), [['zed@example.test', 'queued']]);
  });

  it('posts primary down, queue age, primary up and queue age resolved to the webhook (retrying a failed post)', async () => {
    await waitFor('the primary.down and queue.age alerts', () => webhook.received.some((alert) => alert.event === 'primary.down') && webhook.received.some((alert) => alert.event === 'queue.age'), 15_000);
    assert.ok(webhook.requests() > webhook.received.length, 'the first post failed (503) and was retried');
    const down = webhook.received.find((alert) => alert.event === 'primary.down') as Record<string, unknown>;
    assert.equal(down.target, `127.0.0.1:${primaryPort}`);
    assert.equal(down.host, 'backup.example.test');
    assert.match(String(down.text), /primary 127\.0\.0\.1:\d+ is down/);
    assert.match(String(down.lastError), /ECONNREFUSED/);
    const age = webhook.received.find((alert) => alert.event === 'queue.age') as Record<string, unknown>;
    assert.equal(age.thresholdSeconds, 2);
    assert.ok(Number(age.ageSeconds) >= 2);

    const primary = await startPrimary({ port: primaryPort });
    try {
      await waitFor('the primary.up alert', () => webhook.received.some((alert) => alert.event === 'primary.up'), 15_000);
      const ids = [sent[0]?.id, sent[1]?.id, 'DEAD0000000000001'];
      await waitFor('the spool delivered', () => ids.every((id) => primary.messages.some((message) => queueIdOf(message) === id || message.to.includes('zed@example.test'))));
      await waitFor('the queue.age.ok alert', () => webhook.received.some((alert) => alert.event === 'queue.age.ok'), 15_000);
      assert.deepEqual(
        webhook.received.map((alert) => alert.event).filter((event) => event !== 'queue.age' && event !== 'queue.age.ok'),
        ['primary.down', 'primary.up'],
        'one alert per transition',
      );
      assert.equal(await metric(system.httpPort, 'backupmx_primary_up', { target: `127.0.0.1:${primaryPort}` }), 1);
      assert.ok(((await metric(system.httpPort, 'backupmx_delivery_attempts_total', { route: `127.0.0.1:${primaryPort}`, outcome: 'delivered' })) ?? 0) >= 5);
      await waitFor('an empty spool on /metrics', async () => (await metric(system.httpPort, 'backupmx_spool_messages')) === 0);
      const primaries = (await get('/primaries')).body as { targets: Record<string, { state: string }>; transitions: Array<{ from: string; to: string }> };
      assert.equal(primaries.targets[`127.0.0.1:${primaryPort}`]?.state, 'up');
      assert.deepEqual(primaries.transitions.map((transition) => [transition.from, transition.to]), [['down', 'up'], ['unknown', 'down']]);
    } finally {
      await primary.close();
    }
  });
});
