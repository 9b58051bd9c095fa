import assert from 'node:assert/strict';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createLogger } from '../shared/src/runtime/logger.ts';
import { observeSpool, registry } from '../shared/src/runtime/metrics.ts';
import { createFileDeadLetters } from '../shared/src/broker/file-dead-letters.ts';
import { serviceName, telemetryEnabled } from '../shared/src/runtime/telemetry.ts';
import { adminAuth, isLoopback, tokenMatches } from '../services/spool/src/admin-auth.ts';
import { detailView, traceIdOf } from '../services/spool/src/admin-api.ts';
import { createNotifier, primaryAlert, queueAgeAlert, queueAgeChange } from '../services/spool/src/alerts.ts';
import { applyPrimaryEvent, type PrimaryState } from '../services/spool/src/primaries.ts';
import { rejectionLabels } from '../services/ingress/src/smtp-metrics.ts';
import { recordAttempt, replyCode } from '../services/deliverer/src/attempt-telemetry.ts';
import { formatAge, queueTable, statusText } from '../src/cli/format.ts';
import { run } from '../src/cli/main.ts';
import { sample } from './support/metrics.ts';
import { tempDir } from './support/util.ts';
import { startWebhook } from './support/webhook.ts';

const log = createLogger('test', 'silent');

describe('telemetry: started only when an OTLP endpoint is configured', () => {
  it('reads the standard OTEL_* variables', () => {
    assert.equal(telemetryEnabled({}), false);
    assert.equal(telemetryEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318' }), true);
    assert.equal(telemetryEnabled({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://jaeger:4318/v1/traces' }), true);
    assert.equal(telemetryEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' }), false);
    assert.equal(telemetryEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318', OTEL_SDK_DISABLED: 'true' }), false);
    assert.equal(telemetryEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://jaeger:4318', OTEL_TRACES_EXPORTER: 'none' }), false);
  });

  it('names each service after its entry point', () => {
    assert.equal(serviceName('/app/services/deliverer/src/main.ts'), 'backupmx-deliverer');
    assert.equal(serviceName('/app/src/main.ts'), 'backupmx');
    assert.equal(serviceName(undefined), 'backupmx');
  });

  it('loads no SDK module when tracing is off (this test process has no OTEL_* endpoint)', () => {
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((path) => path.includes('@opentelemetry/sdk-') || path.includes('instrumentation'));
    assert.deepEqual(loaded, []);
  });
});

describe('admin API access', () => {
  it('knows loopback addresses', () => {
    for (const address of ['127.0.0.1', '127.3.2.1', '::1', '::ffff:127.0.0.1']) assert.equal(isLoopback(address), true, address);
    for (const address of ['10.0.0.1', '::ffff:192.0.2.1', '2001:db8::1', '', undefined]) assert.equal(isLoopback(address), false, String(address));
  });

  it('compares tokens exactly, whatever their length', () => {
    assert.equal(tokenMatches('secret', 'secret'), true);
    assert.equal(tokenMatches('secret ', 'secret'), false);
    assert.equal(tokenMatches('s', 'secret'), false);
    assert.equal(tokenMatches('', 'secret'), false);
  });

  it('without ADMIN_TOKEN refuses a client that is not on loopback, or comes through a proxy, with 403', () => {
    let status = 0;
    let body: unknown;
    let passed = false;
    const res = { status: (code: number) => ((status = code), res), json: (value: unknown) => ((body = value), res), set: () => res };
    const gate = adminAuth(undefined);
    const request = (remoteAddress: string, headers: Record<string, string> = {}) => ({ socket: { remoteAddress }, get: (name: string) => headers[name] }) as never;
    gate(request('192.0.2.7'), res as never, () => (passed = true));
    assert.deepEqual([passed, status, body], [false, 403, { error: 'the admin API answers only on loopback while ADMIN_TOKEN is not set (and not through a proxy)' }]);
    gate(request('127.0.0.1', { 'x-forwarded-for': '192.0.2.7' }), res as never, () => (passed = true));
    assert.equal(passed, false, 'a reverse proxy on this host forwarded it: not a local client');
    gate(request('::ffff:127.0.0.1'), res as never, () => (passed = true));
    assert.equal(passed, true);
  });
});

describe('primaries and alerts', () => {
  const event = (state: 'up' | 'down' | 'unknown', lastError: string | null = null) => ({ target: '10.0.0.5:25', state, since: 1000, lastError, latencyMs: 3 });

  it('counts a change of state once, whichever event carries it', () => {
    const states = new Map<string, PrimaryState>();
    assert.equal(applyPrimaryEvent(states, event('unknown'), 1), null);
    assert.deepEqual(applyPrimaryEvent(states, event('down', 'ECONNREFUSED'), 2), { target: '10.0.0.5:25', from: 'unknown', to: 'down', at: 2, lastError: 'ECONNREFUSED' });
    assert.equal(applyPrimaryEvent(states, event('down', 'ECONNREFUSED'), 3), null, 'primary.status after primary.down');
    assert.equal(applyPrimaryEvent(states, event('up'), 4)?.to, 'up');
    assert.equal(states.get('10.0.0.5:25')?.updatedAt, 4);
  });

  it('alerts on down, and on up only after down', () => {
    const state = { state: 'down', since: 0, lastError: 'timeout', latencyMs: null, tls: null, updatedAt: 0 } as const;
    assert.equal(primaryAlert({ target: 't:25', from: 'unknown', to: 'down', at: 0, lastError: 'timeout' }, state, 'mx2')?.event, 'primary.down');
    assert.equal(primaryAlert({ target: 't:25', from: 'down', to: 'up', at: 0, lastError: null }, { ...state, state: 'up' }, 'mx2')?.event, 'primary.up');
    assert.equal(primaryAlert({ target: 't:25', from: 'unknown', to: 'up', at: 0, lastError: null }, { ...state, state: 'up' }, 'mx2'), null);
  });

  it('fires the queue-age alert once when the oldest message passes the age, and resolves it once', () => {
    assert.equal(queueAgeChange(false, null, 10_000, 5000), null);
    assert.equal(queueAgeChange(false, 6000, 10_000, 5000), null);
    assert.equal(queueAgeChange(false, 4000, 10_000, 5000), 'fire');
    assert.equal(queueAgeChange(true, 4000, 10_000, 5000), null);
    assert.equal(queueAgeChange(true, 9000, 10_000, 5000), 'resolve');
    assert.equal(queueAgeChange(true, null, 10_000, 5000), 'resolve');
    const stats = { queued: { 'a:25': 3, 'b:25': 1 }, held: 0, delivered: 0, failed: 0, messages: 2, oldestQueuedAt: 0 };
    assert.deepEqual(queueAgeAlert('fire', stats, 90_000, 60_000, 'mx2'), {
      event: 'queue.age',
      text: 'mx2: the oldest queued message has waited 90 s (more than 60 s); 4 deliveries queued',
      oldestQueuedAt: '1970-01-01T00:00:00.000Z',
      ageSeconds: 90,
      thresholdSeconds: 60,
      messages: 2,
      queued: 4,
    });
  });

  it('retries a webhook that fails until it answers; an unreachable one does not hold up the others', async () => {
    const flaky = await startWebhook({ failFirst: 2 });
    const notifier = createNotifier({ urls: [flaky.url, 'http://127.0.0.1:1/closed'], host: 'mx2', log, attempts: 3, firstRetryMs: 20, timeoutMs: 2000 });
    try {
      notifier.send({ event: 'primary.down', text: 'down', target: 't:25' });
      for (let waited = 0; flaky.received.length === 0 && waited < 5000; waited += 20) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(flaky.requests(), 3, 'two failures, then success');
      assert.deepEqual({ ...flaky.received[0], at: 'x' }, { event: 'primary.down', text: 'down', target: 't:25', host: 'mx2', at: 'x' });
    } finally {
      await notifier.stop();
      await flaky.close();
    }
  });
});

describe('views', () => {
  it('reads the trace id of a stored traceparent and links it', () => {
    assert.equal(traceIdOf({ traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' }), '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(traceIdOf({ traceparent: '00-00000000000000000000000000000000-00f067aa0ba902b7-01' }), null);
    assert.equal(traceIdOf({}), null);
    const message = { id: 'Q1', mailFrom: '', recipients: ['a@x.test'], envelope: { mailFrom: '', rcptTo: ['a@x.test'] }, size: 10, receivedAt: 0, trace: { traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' }, delayWarnedAt: null };
    const view = detailView({ message, deliveries: [], attempts: [] }, 1000, 'http://jaeger:16686/trace/{traceId}');
    assert.equal(view.traceUrl, 'http://jaeger:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736');
  });

  it('labels SMTP refusals by stage, reply code and enhanced status', () => {
    assert.deepEqual(rejectionLabels('rcpt', Object.assign(new Error('5.7.1 Relay access denied'), { responseCode: 550 })), { stage: 'rcpt', code: '550', status: '5.7.1' });
    assert.deepEqual(rejectionLabels('data', new Error('boom')), { stage: 'data', code: '450', status: '' });
  });

  it('takes the reply code of a delivery attempt', () => {
    assert.equal(replyCode({ target: 'a:25', result: { response: '250 2.0.0 Ok: queued' } }), 250);
    assert.equal(replyCode({ target: 'a:25', error: { message: 'x', responseCode: 451 } }), 451);
    assert.equal(replyCode({ target: 'a:25', error: { message: 'ECONNREFUSED' } }), null);
  });

  it('puts next hop and reply code on the delivery span, and records a failed attempt as an error', () => {
    const recorded = { attributes: {} as Record<string, unknown>, exceptions: [] as unknown[], status: null as unknown };
    const span = {
      setAttributes: (attributes: Record<string, unknown>) => Object.assign(recorded.attributes, attributes),
      recordException: (exception: unknown) => recorded.exceptions.push(exception),
      setStatus: (status: unknown) => (recorded.status = status),
    };
    const attempt = { target: 'mx.example.test:25', error: { message: 'Message failed: 451 4.3.0 try later', response: '451 4.3.0 try later', responseCode: 451 } };
    recordAttempt(span as never, 'mx.example.test:25', attempt, [{ result: 'deferred' }, { result: 'deferred' }]);
    assert.deepEqual(recorded.attributes, { 'backupmx.next_hop': 'mx.example.test:25', 'backupmx.delivered': 0, 'backupmx.deferred': 2, 'backupmx.failed': 0, 'backupmx.reply_code': 451 });
    assert.deepEqual(recorded.exceptions, [{ name: 'SmtpError', message: '451 4.3.0 try later' }]);
    assert.deepEqual(recorded.status, { code: 2, message: 'Message failed: 451 4.3.0 try later' }, 'SpanStatusCode.ERROR');
  });

  it('sets the spool gauges from the store statistics, dropping routes that emptied', async () => {
    observeSpool({ queued: { 'a:25': 3, 'b:25': 1 }, held: 2, delivered: 5, failed: 1, messages: 4, oldestQueuedAt: 1000 }, 61_000);
    observeSpool({ queued: { 'a:25': 2 }, held: 2, delivered: 5, failed: 1, messages: 3, oldestQueuedAt: 1000 }, 61_000);
    const text = await registry.metrics();
    assert.equal(sample(text, 'backupmx_spool_queued', { route: 'a:25' }), 2);
    assert.equal(sample(text, 'backupmx_spool_queued', { route: 'b:25' }), undefined);
    assert.equal(sample(text, 'backupmx_spool_deliveries', { state: 'queued' }), 2);
    assert.equal(sample(text, 'backupmx_spool_deliveries', { state: 'held' }), 2);
    assert.equal(sample(text, 'backupmx_spool_oldest_queued_age_seconds'), 60);
  });

  it('formats ages, an empty queue and the status', () => {
    assert.deepEqual([formatAge(5), formatAge(125), formatAge(3 * 3600 + 120), formatAge(2 * 86_400 + 3600)], ['5s', '2m5s', '3h2m', '2d1h']);
    assert.equal(queueTable({ total: 0, offset: 0, items: [] }), 'Mail queue is empty\n');
    const text = statusText({
      primaries: { '10.0.0.5:25': { state: 'down', since: '2025-01-01T00:00:00.000Z', lastError: 'timeout' } },
      spool: { queued: { '10.0.0.5:25': 7 }, held: 1, failed: 0, delivered: 0, messages: 5, oldestQueuedAgeSeconds: 3700 },
    });
    assert.match(text, /^ {2}10\.0\.0\.5:25 +DOWN +since 2025-01-01 00:00:00Z {2}\(timeout\)$/m);
    assert.match(text, /^ {2}5 messages waiting; 7 deliveries queued, 1 held, 0 failed$/m);
    assert.match(text, /^ {2}oldest queued: 1h1m$/m);
  });
});

describe('the CLI without a server', () => {
  const capture = () => {
    let text = '';
    return { write: (chunk: string) => (text += chunk), text: () => text };
  };

  it('answers usage errors with exit code 64 and the usage', async () => {
    for (const argv of [[], ['show'], ['retry'], ['hold', 'A1', '--domain', 'x.test'], ['release', 'A1', '--dry-run'], ['queue', '--colour'], ['bogus'], ['hash-password', 'secret123']]) {
      const out = capture();
      const err = capture();
      assert.equal(await run(argv, {}, out, err), 64, argv.join(' '));
      assert.match(err.text(), /usage: backupmx COMMAND/);
      assert.equal(out.text(), '');
    }
  });

  it('says in one line when BACKUPMX_API is not a URL', async () => {
    const err = capture();
    assert.equal(await run(['status'], { BACKUPMX_API: 'not a url' }, capture(), err), 64);
    assert.equal(err.text(), 'backupmx: BACKUPMX_API is not a URL: "not a url"\n');
  });
});

describe('dead letters in DATA_DIR/dead', () => {
  it('are put back when the spool cannot take them, never lost', async () => {
    const dir = tempDir();
    try {
      mkdirSync(dir.path, { recursive: true });
      writeFileSync(join(dir.path, 'Q1.eml'), 'Subject: x\r\n\r\nbody\r\n');
      writeFileSync(join(dir.path, 'Q1.json'), JSON.stringify({ id: 'Q1', envelope: { mailFrom: '', rcptTo: ['a@example.test'] }, receivedAt: 5 }));
      const dead = createFileDeadLetters(dir.path, async () => {
        throw new Error('spool is not running');
      });
      await assert.rejects(dead.replay('Q1'), /spool is not running/);
      assert.ok(existsSync(join(dir.path, 'Q1.eml')) && existsSync(join(dir.path, 'Q1.json')));
      const listed = await dead.list(10);
      assert.deepEqual({ ...listed.items[0], deadAt: 0 }, { id: 'Q1', envelope: { mailFrom: '', rcptTo: ['a@example.test'] }, size: 20, receivedAt: 5, deadAt: 0, reason: 'rejected' });
      assert.equal(await dead.replay('../Q1'), false);
      assert.equal(await dead.replay('Q2'), false);
    } finally {
      dir.remove();
    }
  });
});

describe('store reconnects', () => {
  it('are counted when the store check comes back after being lost (not at start-up)', async () => {
    const { followReadiness } = await import('../shared/src/runtime/metrics.ts');
    const states = [false, true, true, false, false, true, true];
    const before = sample(await registry.metrics(), 'backupmx_store_reconnects_total') ?? 0;
    let index = 0;
    const stop = followReadiness(() => ({ store: states[Math.min(index++, states.length - 1)] ?? true }), 5);
    // Until every state has been read (a fixed wait was too short on a loaded machine).
    while (index < states.length) await new Promise((resolve) => setTimeout(resolve, 5));
    stop();
    assert.equal((sample(await registry.metrics(), 'backupmx_store_reconnects_total') ?? 0) - before, 1);
  });
});
