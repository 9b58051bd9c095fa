/**
 * `node bench/recovery.ts`: how soon mail queued during an outage reaches a primary that comes
 * back, with default PROBE_* settings (issue 9: within 3 s). Per round: start backupmx (the single
 * process, or the four services over RabbitMQ), primary down; wait until health reports it down;
 * queue MESSAGES messages; start a primary (smtp-server) and print "first message N ms after the
 * primary listened" (and the last). Prints numbers; it is not a test.
 */
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import { spawnService, waitReady, type Service } from '../test/support/processes.ts';
import { createVhost } from '../test/support/rabbitmq.ts';
import { sendMessages } from '../test/support/mail.ts';
import { startPrimary } from '../test/support/primary.ts';
import { freePort, tempDir, waitFor } from '../test/support/util.ts';

const { values: args } = parseArgs({
  options: {
    mode: { type: 'string', default: 'both' },
    rounds: { type: 'string', default: '3' },
    messages: { type: 'string', default: '10' },
    /** Set PROBE_INTERVAL_DOWN (e.g. 10s: the behaviour before it existed); default: unset, the service default. */
    'probe-interval-down': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log('usage: node bench/recovery.ts [--mode one|rabbit|both] [--rounds 3] [--messages 10] [--probe-interval-down 10s]');
  process.exit(0);
}
const ROUNDS = Number(args.rounds);
const MESSAGES = Number(args.messages);
const modes = args.mode === 'both' ? (['one', 'rabbit'] as const) : ([args.mode] as ['one' | 'rabbit']);

async function round(mode: 'one' | 'rabbit'): Promise<{ firstMs: number; lastMs: number; probes: number }> {
  const dir = tempDir('backupmx-recovery-');
  const vhost = mode === 'rabbit' ? createVhost() : null;
  const services: Service[] = [];
  let primary: Awaited<ReturnType<typeof startPrimary>> | null = null;
  try {
    const primaryPort = await freePort();
    const smtpPort = await freePort();
    const env: Record<string, string> = {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: `127.0.0.1:${primaryPort}`,
      LOG_LEVEL: 'warn',
      DATA_DIR: join(dir.path, 'data'),
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(smtpPort),
      SMTP_HOSTNAME: 'backup.example.test',
      HTTP_HOST: '127.0.0.1',
      ...(vhost ? { AMQP_URL: vhost.url } : {}),
      ...(args['probe-interval-down'] ? { PROBE_INTERVAL_DOWN: args['probe-interval-down'] } : {}),
    };
    for (const entry of mode === 'one' ? (['all'] as const) : (['spool', 'health', 'deliverer', 'ingress'] as const)) {
      const service = spawnService(entry, entry, { ...env, HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs'));
      services.push(service);
      await waitReady(service, 60_000);
    }
    const monitor = services.find((service) => service.name === 'all' || service.name === 'health');
    await waitFor('health to report the primary down', async () => {
      const body = (await (await fetch(`http://127.0.0.1:${monitor?.httpPort}/status`)).json()) as { targets?: Record<string, { state?: string }> };
      return body.targets?.[`127.0.0.1:${primaryPort}`]?.state === 'down';
    }, 60_000, 100);
    const sent = await sendMessages(smtpPort, MESSAGES);
    if (sent.some((message) => !message.id)) throw new Error(`not accepted: ${sent.find((message) => !message.id)?.reply}`);
    const store = await openSqliteStore(join(env.DATA_DIR ?? '', 'spool.sqlite'));
    await waitFor('the spool to hold them', async () => (await store.stats()).messages >= MESSAGES, 60_000);
    await store.close();
    // A random phase against the probe clock.
    await sleep(Math.random() * 1000);
    primary = await startPrimary({ port: primaryPort });
    const listened = performance.now();
    const reached = primary;
    let firstMs = 0;
    await waitFor('the first message', () => {
      if (reached.messages.length > 0) firstMs = performance.now() - listened;
      return reached.messages.length > 0;
    }, 120_000, 5);
    await waitFor('every message', () => reached.messages.length >= MESSAGES, 120_000, 5);
    const lastMs = performance.now() - listened;
    const firstDelivery = reached.sessions.findIndex((session) => session.mail);
    return { firstMs, lastMs, probes: firstDelivery };
  } finally {
    for (const service of services.reverse()) await service.stop();
    await primary?.close();
    vhost?.remove();
    dir.remove();
  }
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;
console.log(`recovery: ${args['probe-interval-down'] ? `PROBE_INTERVAL_DOWN=${args['probe-interval-down']}, other` : 'default'} PROBE_* settings, ${MESSAGES} messages queued while the primary was down, ${ROUNDS} rounds per mode`);
for (const mode of modes) {
  const label = mode === 'one' ? 'one process' : 'four services over RabbitMQ';
  const results = [];
  for (let i = 1; i <= ROUNDS; i++) {
    const result = await round(mode);
    results.push(result);
    console.log(`${label}, round ${i}: first message ${Math.round(result.firstMs)} ms after the primary listened (all ${MESSAGES}: ${Math.round(result.lastMs)} ms; ${result.probes} probe sessions before the first delivery)`);
  }
  console.log(`${label}: first message median ${Math.round(median(results.map((r) => r.firstMs)))} ms, max ${Math.round(Math.max(...results.map((r) => r.firstMs)))} ms after the primary listened`);
}
