import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import amqp from 'amqplib';
import { metric } from './support/metrics.ts';
import { startOtlpReceiver, type ReceivedSpan } from './support/otlp.ts';
import { startPrimary } from './support/primary.ts';
import { ROOT, spawnService, waitReady, type Service } from './support/processes.ts';
import { queueIdOf, sendMessages } from './support/mail.ts';
import { createVhost } from './support/rabbitmq.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * The four services as separate processes over the real RabbitMQ, exporting traces over OTLP
 * (HTTP/JSON) to a receiver in this test: one message is one trace across ingress, spool and
 * deliverer. Then what an administrator reads: /metrics of every service, and the dead-letter
 * queue through the spool's admin API and the CLI.
 */
describe('operations over RabbitMQ: tracing, metrics, dead letters', () => {
  const vhost = createVhost();
  const dir = tempDir();
  const services: Record<string, Service> = {};
  let otlp: Awaited<ReturnType<typeof startOtlpReceiver>>;
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  let smtpPort: number;
  let env: Record<string, string>;

  before(async () => {
    otlp = await startOtlpReceiver();
    primary = await startPrimary();
    smtpPort = await freePort();
    env = {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: `127.0.0.1:${primary.port}`,
      AMQP_URL: vhost.url,
      DATA_DIR: join(dir.path, 'data'),
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(smtpPort),
      SMTP_HOSTNAME: 'backup.example.test',
      PROBE_INTERVAL: '500ms',
      PROBE_TIMEOUT: '1s',
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
      OTEL_BSP_SCHEDULE_DELAY: '200',
    };
    for (const name of ['spool', 'health', 'deliverer', 'ingress'] as const) {
      services[name] = spawnService(`ops-${name}`, name, { ...env, HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs'));
      await waitReady(services[name]);
    }
  });
  after(async () => {
    await Promise.all(Object.values(services).map((service) => service.stop('SIGKILL')));
    await primary.close();
    await otlp.close();
    vhost.remove();
    if (process.env.KEEP_TEST_LOGS) console.log(`logs kept in ${join(dir.path, 'logs')}`);
    else dir.remove();
  });

  const port = (name: string) => (services[name] as Service).httpPort;

  it('puts ingress, the RabbitMQ publish, spool and deliverer spans of one message in one trace', async () => {
    await waitFor('the deliverer to see the primary up', async () => (await metric(port('health'), 'backupmx_primary_up', { target: `127.0.0.1:${primary.port}` })) === 1);
    const [sent] = await sendMessages(smtpPort, 1, { to: () => ['one@example.test', 'two@example.test'] });
    assert.ok(sent?.id, `accepted: ${sent?.reply}`);
    const id = sent.id;
    await waitFor('the message at the primary', () => primary.messages.some((message) => queueIdOf(message) === id));

    const ofMessage = (name: string) => otlp.spans.find((span) => span.name === name && span.attributes['backupmx.queue_id'] === id);
    const spans = await waitFor('smtp.data, spool.store and smtp.deliver spans', () => {
      const found = [ofMessage('smtp.data'), ofMessage('spool.store'), ofMessage('smtp.deliver')];
      return found.every(Boolean) ? (found as ReceivedSpan[]) : null;
    });
    const [data, store, deliver] = spans as [ReceivedSpan, ReceivedSpan, ReceivedSpan];
    assert.deepEqual(
      spans.map((span) => span.service),
      ['backupmx-ingress', 'backupmx-spool', 'backupmx-deliverer'],
    );
    assert.equal(store.traceId, data.traceId, 'spool span in the trace of the SMTP DATA span');
    assert.equal(deliver.traceId, data.traceId, 'delivery span in the trace of the SMTP DATA span');
    assert.equal(data.parentSpanId, '', 'the trace starts at DATA');

    // Every span of the trace hangs together: each parent is a span of the same trace.
    const trace = await waitFor('the whole trace', () => {
      const all = otlp.spans.filter((span) => span.traceId === data.traceId);
      const ids = new Set(all.map((span) => span.spanId));
      return all.every((span) => span.parentSpanId === '' || ids.has(span.parentSpanId)) ? all : null;
    });
    const publish = trace.find((span) => span.name === 'publish backupmx.mail');
    assert.ok(publish, `the RabbitMQ publish span is in the trace: ${trace.map((span) => span.name).join(', ')}`);
    assert.equal(publish.service, 'backupmx-ingress');
    assert.equal(publish.parentSpanId, data.spanId);

    assert.equal(data.attributes['backupmx.recipients'], 2);
    assert.equal(deliver.attributes['backupmx.recipients'], 2);
    assert.equal(deliver.attributes['backupmx.next_hop'], `127.0.0.1:${primary.port}`);
    assert.equal(deliver.attributes['backupmx.reply_code'], 250);
    assert.equal(deliver.attributes['backupmx.delivered'], 2);
    assert.notEqual(deliver.status, 2, 'a delivered attempt is not an error');
    // Health events (primary.status every probe interval) are not traced.
    assert.equal(otlp.spans.filter((span) => span.attributes['messaging.destination'] === 'backupmx.events').length, 0);
    assert.deepEqual(otlp.rejected, []);
  });

  it('traces admin API requests (not scrapes and probes)', async () => {
    assert.equal((await fetch(`http://127.0.0.1:${port('spool')}/api/status`)).status, 200);
    await fetch(`http://127.0.0.1:${port('spool')}/metrics`);
    const span = await waitFor('a span of the admin request', () => otlp.spans.find((s) => s.service === 'backupmx-spool' && s.name === 'GET /api/status'));
    assert.equal(span.attributes['http.response.status_code'], 200);
    const handler = await waitFor('the express handler span', () => otlp.spans.find((s) => s.traceId === span.traceId && s.name === 'request handler'));
    assert.equal(handler.attributes['http.route'], '/api/status', 'express instrumentation names the route');
    assert.equal(otlp.spans.filter((s) => String(s.attributes['http.target'] ?? s.attributes['url.path'] ?? '').startsWith('/metrics')).length, 0);
  });

  it('serves /metrics on every service, with values that moved', async () => {
    assert.equal(await metric(port('ingress'), 'backupmx_messages_accepted_total'), 1);
    assert.ok(((await metric(port('ingress'), 'backupmx_smtp_connections_total')) ?? 0) >= 1);
    assert.equal(await metric(port('deliverer'), 'backupmx_delivery_attempts_total', { route: `127.0.0.1:${primary.port}`, outcome: 'delivered' }), 2);
    assert.equal(await metric(port('health'), 'backupmx_primary_up', { target: `127.0.0.1:${primary.port}` }), 1);
    assert.ok(((await metric(port('health'), 'backupmx_probe_duration_seconds_count', { target: `127.0.0.1:${primary.port}`, result: 'ok' })) ?? 0) >= 2);
    assert.equal(await metric(port('spool'), 'backupmx_spool_messages'), 0, 'delivered mail left the spool');
    assert.equal(await metric(port('spool'), 'backupmx_spool_deliveries', { state: 'delivered' }), 2);
    for (const name of ['ingress', 'spool', 'health', 'deliverer']) {
      assert.equal(await metric(port(name), 'backupmx_ready', { check: 'broker' }), 1, `${name} reports its broker connection`);
    }
  });

  it('lists the dead-letter queue and replays a message from it (admin API and CLI)', async () => {
    const connection = await amqp.connect(vhost.url);
    try {
      const channel = await connection.createConfirmChannel();
      const envelope = JSON.stringify({ mailFrom: 'a@origin.test', rcptTo: ['late@example.test'] });
      const publish = (exchange: string, key: string, id: string, body: string, headers: Record<string, string | number>) =>
        new Promise<void>((resolve, reject) => channel.publish(exchange, key, Buffer.from(body), { messageId: id, persistent: true, headers }, (error) => (error ? reject(error) : resolve())));
      // One the spool cannot read (it dead-letters it), one that was dead-lettered earlier although fine.
      await publish('backupmx.mail', 'mail.received', 'NOHEADERS00000001', 'no header here\r\n\r\nbody\r\n', { 'x-envelope': envelope });
      await publish('', 'backupmx.dead', 'REPLAYME000000001', 'Subject: replay me\r\n\r\nbody\r\n', { 'x-envelope': envelope, 'x-received-at': Date.now() });
      await waitFor('two dead letters', async () => (await channel.checkQueue('backupmx.dead')).messageCount === 2);
    } finally {
      await connection.close();
    }
    const api = `http://127.0.0.1:${port('spool')}/api`;
    const list = async () => (await (await fetch(`${api}/dead`)).json()) as { total: number; items: Array<{ id: string; reason: string | null; envelope: unknown; size: number }> };
    const dead = await list();
    assert.equal(dead.total, 2);
    const rejected = dead.items.find((item) => item.id === 'NOHEADERS00000001');
    assert.equal(rejected?.reason, 'rejected');
    assert.deepEqual(rejected?.envelope, { mailFrom: 'a@origin.test', rcptTo: ['late@example.test'] });
    assert.equal((await list()).total, 2, 'listing does not consume');

    const cli = await promisify(execFile)(process.execPath, [join(ROOT, 'bin/backupmx.js'), 'dead'], { env: { PATH: process.env.PATH ?? '', BACKUPMX_API: `http://127.0.0.1:${port('spool')}` } });
    assert.match(cli.stdout, /^NOHEADERS00000001 .* rejected +a@origin\.test -> late@example\.test$/m);
    assert.match(cli.stdout, /^-- 2 dead letters/m);

    const unknown = await fetch(`${api}/dead/NOSUCHID/replay`, { method: 'POST' });
    assert.equal(unknown.status, 404);
    assert.deepEqual(await unknown.json(), { error: 'no dead letter NOSUCHID' });

    const replay = await fetch(`${api}/dead/REPLAYME000000001/replay`, { method: 'POST' });
    assert.equal(replay.status, 200);
    await waitFor('the replayed message at the primary', () => primary.messages.some((message) => message.to.includes('late@example.test') && message.raw.toString().includes('Subject: replay me')));
    const after = await list();
    assert.equal(after.total, 1);
    assert.equal(after.items[0]?.id, 'NOHEADERS00000001');
  });
});
