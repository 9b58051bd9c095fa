/**
 * `npm run bench:large`: memory for large mail (issue 9, part 3). Starts the single process
 * (src/main.ts) and/or the four services over RabbitMQ (private vhost), with a primary that takes
 * everything, and sends one message of SIZE bytes (default 25,000,000: under the default
 * MAX_MESSAGE_SIZE with our headers), then three at once. For each process it prints the idle RSS
 * and the peak RSS (VmHWM, reset between cases through /proc/PID/clear_refs) while the message(s)
 * went through ingress, spool and deliverer to the primary, and what each case added, in MiB and
 * as a multiple of the message bytes. Target: at most 2x. The client declares SIZE in MAIL FROM, as
 * Postfix's does (ingress then holds the message in one buffer); --no-size for a client that does not.
 * Prints numbers; it is not a test.
 */
import { Buffer } from 'node:buffer';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import nodemailer from 'nodemailer';
import { SMTPServer } from 'smtp-server';
import { spawnService, waitReady, type Service } from '../test/support/processes.ts';
import { createVhost } from '../test/support/rabbitmq.ts';
import { freePort, tempDir } from '../test/support/util.ts';

const { values: args } = parseArgs({
  options: {
    size: { type: 'string', default: '25000000' },
    mode: { type: 'string', default: 'both' },
    keep: { type: 'boolean', default: false },
    'no-size': { type: 'boolean', default: false },
    'node-options': { type: 'string', default: '' },
    env: { type: 'string', multiple: true, default: [] },
    help: { type: 'boolean', default: false },
  },
});
if (args.help) {
  console.log('usage: npm run bench:large -- [--mode one|rabbit|both] [--size 25000000] [--env KEY=VALUE ...] [--node-options "--heapsnapshot-signal=SIGUSR2"] [--no-size] [--keep]');
  process.exit(0);
}
const SIZE = Number(args.size);
const MiB = 1024 * 1024;

function status(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const match = new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) * 1024 : NaN;
}
/** Reset VmHWM to the current RSS (Linux: "5" > clear_refs); false where not allowed. */
function resetPeak(pid: number): boolean {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** A message of `bytes` bytes: headers and base64-looking 76-character lines. */
function makeMessage(index: number, bytes: number): Buffer {
  const head = Buffer.from(`From: <a@origin.test>\r\nTo: <u@example.test>\r\nSubject: large ${index}\r\nMessage-ID: <large-${index}-${Date.now()}@origin.test>\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n`, 'latin1');
  const body = Buffer.alloc(bytes - head.length);
  const line = Buffer.from(`${'QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3'.repeat(2).slice(0, 76)}\r\n`, 'latin1');
  for (let at = 0; at < body.length; at += line.length) line.copy(body, at, 0, Math.min(line.length, body.length - at));
  body.write('\r\n', body.length - 2, 'latin1');
  return Buffer.concat([head, body]);
}

/** The primary: drains every DATA, keeps only a count and the subjects. */
async function startPrimary(port: number) {
  const subjects: string[] = [];
  const server = new SMTPServer({
    disabledCommands: ['AUTH', 'STARTTLS'],
    logger: false,
    size: 0,
    onData(stream, _session, callback) {
      let head = '';
      stream.on('data', (chunk: Buffer) => {
        if (head.length < 2000) head += chunk.toString('latin1', 0, 2000);
      });
      stream.on('end', () => {
        subjects.push(/Subject: (large \d+)/.exec(head)?.[1] ?? '?');
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  return { subjects, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

async function until(what: string, timeoutMs: number, check: () => boolean): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

type Row = { mode: string; process: string; idle: number; one: number; three: number };

async function runMode(mode: 'one' | 'rabbit'): Promise<Row[]> {
  const label = mode === 'one' ? 'one process' : 'four services over RabbitMQ';
  const dir = tempDir('backupmx-bench-large-');
  const vhost = mode === 'rabbit' ? createVhost() : null;
  const services: Service[] = [];
  const primaryPort = await freePort();
  const smtpPort = await freePort();
  const primary = await startPrimary(primaryPort);
  try {
    const env: Record<string, string> = {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: `127.0.0.1:${primaryPort}`,
      DATA_DIR: join(dir.path, 'data'),
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(smtpPort),
      SMTP_HOSTNAME: 'backup.example.test',
      HTTP_HOST: '127.0.0.1',
      LOG_LEVEL: 'warn',
      PROBE_INTERVAL: '1s',
      ...(vhost ? { AMQP_URL: vhost.url } : {}),
      ...(args['node-options'] ? { NODE_OPTIONS: args['node-options'] } : {}),
      ...Object.fromEntries(args.env.map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)])),
    };
    for (const entry of mode === 'one' ? (['all'] as const) : (['spool', 'health', 'deliverer', 'ingress'] as const)) {
      const service = spawnService(entry === 'all' ? 'backupmx' : entry, entry, { ...env, HTTP_PORT: String(await freePort()) }, join(dir.path, 'logs'));
      services.push(service);
      await waitReady(service, 120_000);
    }
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, secure: false, ignoreTLS: true, socketTimeout: 600_000 });
    const send = (index: number) => {
      const raw = makeMessage(index, SIZE);
      // Like Postfix's and most MTAs' SMTP clients, declare the size in MAIL FROM (RFC 1870), unless --no-size.
      return transport.sendMail({ envelope: { from: 'a@origin.test', to: ['u@example.test'], ...(args['no-size'] ? {} : { size: raw.length }) }, raw });
    };
    // Warm up with a small message (code paths loaded, connections made), then let things settle.
    await transport.sendMail({ envelope: { from: 'a@origin.test', to: ['u@example.test'] }, raw: 'Subject: large 0\r\n\r\nwarm up\r\n' });
    await until('the warm-up delivered', 120_000, () => primary.subjects.length >= 1);
    await sleep(3000);
    const pids = services.map((s) => s.child.pid as number);
    const idle = pids.map((pid) => status(pid, 'VmRSS'));
    const canReset = pids.every(resetPeak);
    if (!canReset) console.log(`[${label}] cannot reset VmHWM (not root?): the three-at-once peak includes the one-message case`);

    const t1 = Date.now();
    await send(1);
    await until('message 1 at the primary', 600_000, () => primary.subjects.includes('large 1'));
    const one = pids.map((pid) => status(pid, 'VmHWM'));
    console.log(`[${label}] one message of ${SIZE} bytes accepted and delivered in ${((Date.now() - t1) / 1000).toFixed(1)} s`);

    await sleep(2000);
    pids.forEach(resetPeak);
    const t3 = Date.now();
    await Promise.all([2, 3, 4].map(send));
    await until('messages 2-4 at the primary', 600_000, () => ['large 2', 'large 3', 'large 4'].every((s) => primary.subjects.includes(s)));
    const three = pids.map((pid) => status(pid, 'VmHWM'));
    console.log(`[${label}] three messages at once accepted and delivered in ${((Date.now() - t3) / 1000).toFixed(1)} s`);
    transport.close();
    return services.map((s, i) => ({ mode: label, process: s.name, idle: idle[i] ?? NaN, one: one[i] ?? NaN, three: three[i] ?? NaN }));
  } finally {
    for (const service of services) await service.stop('SIGKILL');
    await primary.close();
    vhost?.remove();
    if (args.keep) console.log(`[${label}] kept ${dir.path}`);
    else dir.remove();
  }
}

const modes = args.mode === 'both' ? (['one', 'rabbit'] as const) : ([args.mode] as const);
const rows: Row[] = [];
for (const mode of modes) {
  if (mode !== 'one' && mode !== 'rabbit') throw new Error(`--mode: expected one, rabbit or both, got ${mode}`);
  rows.push(...(await runMode(mode)));
}
const mib = (bytes: number) => (bytes / MiB).toFixed(0);
const times = (bytes: number, of: number) => (bytes / of).toFixed(2);
console.log(`\nmessage size ${SIZE} bytes (${(SIZE / MiB).toFixed(1)} MiB); "added" is peak RSS minus idle RSS; target <= 2.00x the message bytes`);
const table = [
  ['mode', 'process', 'idle RSS MiB', 'peak, one msg MiB', 'added, one', 'x one msg', 'peak, three at once MiB', 'added, three', 'x three msgs'],
  ...rows.map((r) => [r.mode, r.process, mib(r.idle), mib(r.one), mib(r.one - r.idle), times(r.one - r.idle, SIZE), mib(r.three), mib(r.three - r.idle), times(r.three - r.idle, 3 * SIZE)]),
];
for (const mode of new Set(rows.map((r) => r.mode))) {
  const of = rows.filter((r) => r.mode === mode);
  if (of.length < 2) continue;
  const sum = (pick: (r: Row) => number) => of.reduce((a, r) => a + pick(r), 0);
  table.push([mode, 'sum', mib(sum((r) => r.idle)), mib(sum((r) => r.one)), mib(sum((r) => r.one - r.idle)), times(sum((r) => r.one - r.idle), SIZE), mib(sum((r) => r.three)), mib(sum((r) => r.three - r.idle)), times(sum((r) => r.three - r.idle), 3 * SIZE)]);
}
const widths = (table[0] ?? []).map((_, i) => Math.max(...table.map((row) => (row[i] ?? '').length)));
for (const row of table) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  '));
