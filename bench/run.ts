/**
 * `npm run bench`: MESSAGES messages of SIZE body bytes from SESSIONS concurrent SMTP sessions into
 * ingress while the primary is down (accept phase), then the time until a primary that accepts
 * everything has them all (flush phase). Runs the single process (src/main.ts, in-process broker,
 * SQLite) and/or the four services over RabbitMQ (private vhost, one shared SQLite DATA_DIR), and
 * in the same run Postfix as a backup MX of its own (bench/postfix.ts; flushed with `postqueue -f`
 * the moment the primary listens), so that the ratios compare like with like on a noisy machine.
 * `--rounds N` repeats everything and reports the median. Prints numbers; it is not a test.
 * Load: Postfix's smtp-source / smtp-sink when installed, otherwise bench/fallback.ts.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { availableParallelism, cpus, totalmem } from 'node:os';
import { delimiter, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import type { Store } from '../shared/src/store/store.ts';
import { MALLOC_ENV, ROOT, serviceEnv, spawnService, V8_FLAGS, waitReady, type Service } from '../test/support/processes.ts';
import { createVhost } from '../test/support/rabbitmq.ts';
import { freePort, tempDir } from '../test/support/util.ts';
import { nodeSource } from './fallback.ts';
import { postfixUnavailable, startPostfix, type PostfixInstance } from './postfix.ts';

const PHASE_MS = 10 * 60_000;
const FROM = 'a@origin.test';
const TO = 'u@example.test';

const { values: args } = parseArgs({
  options: {
    messages: { type: 'string', default: '5000' },
    sessions: { type: 'string', default: '20' },
    size: { type: 'string', default: '4096' },
    mode: { type: 'string', default: 'both' },
    rounds: { type: 'string', default: '1' },
    'without-postfix': { type: 'boolean', default: false },
    'greeting-delay': { type: 'string' },
    reuse: { type: 'boolean', default: false },
    sink: { type: 'string', default: 'count' },
    tools: { type: 'string', default: 'auto' },
    keep: { type: 'boolean', default: false },
    profile: { type: 'string' },
    env: { type: 'string', multiple: true, default: [] },
    help: { type: 'boolean', default: false },
  },
});

if (args.help) {
  console.log(`usage: npm run bench -- [--mode one|rabbit|both] [--rounds 1] [--messages 5000] [--sessions 20] [--size 4096]
       [--greeting-delay 100ms] [--reuse] [--tools auto|postfix|node] [--without-postfix] [--keep]
  --rounds N        run everything N times; the summary gives the median of each figure
  --without-postfix do not run Postfix as a backup MX alongside (default: it runs when it can)
  --reuse           keep connections open between messages (smtp-source -d); default: one message per connection
  --greeting-delay  GREETING_DELAY for ingress; default: unset (service default)
  --tools           load generator and primary: Postfix smtp-source/smtp-sink, or the nodemailer/smtp-server fallback
  --sink count|files  the primary: smtp-sink counting what it is given (-c, default), or writing each
                    message to a file (-d; its CPU per message is printed with the flush's)
  --keep            keep the temporary directory (logs, spool, sink dump) and print its path
  --env KEY=VALUE   a setting for our processes (repeatable), e.g. --env DELIVERY_CONCURRENCY=20
  --profile DIR     write a V8 CPU profile of each of our processes into DIR (node --cpu-prof);
                    summarise with: node bench/profile-summary.ts DIR/*.cpuprofile`);
  process.exit(0);
}

function positive(name: string, text: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    console.error(`--${name}: expected a whole number above 0, got ${JSON.stringify(text)}`);
    process.exit(2);
  }
  return n;
}
const MESSAGES = positive('messages', args.messages);
const SESSIONS = positive('sessions', args.sessions);
const SIZE = positive('size', args.size);
const ROUNDS = positive('rounds', args.rounds);
const EXTRA_ENV: Record<string, string> = {};
for (const pair of args.env ?? []) {
  const at = pair.indexOf('=');
  if (at < 1) {
    console.error(`--env: expected KEY=VALUE, got ${JSON.stringify(pair)}`);
    process.exit(2);
  }
  EXTRA_ENV[pair.slice(0, at)] = pair.slice(at + 1);
}
const GREETING_DELAY = args['greeting-delay'];
if (!['one', 'rabbit', 'both'].includes(args.mode)) {
  console.error(`--mode: expected one, rabbit or both, got ${JSON.stringify(args.mode)}`);
  process.exit(2);
}
if (!['auto', 'postfix', 'node'].includes(args.tools)) {
  console.error(`--tools: expected auto, postfix or node, got ${JSON.stringify(args.tools)}`);
  process.exit(2);
}
const MODES = args.mode === 'both' ? (['one', 'rabbit'] as const) : ([args.mode as 'one' | 'rabbit'] as const);

function findTool(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/usr/bin', '/usr/local/sbin', '/sbin'];
  for (const dir of dirs) if (dir && existsSync(join(dir, name))) return join(dir, name);
  return null;
}
const SMTP_SOURCE = findTool('smtp-source');
const SMTP_SINK = findTool('smtp-sink');
const SINK_MODE = args.sink;
if (SINK_MODE !== 'count' && SINK_MODE !== 'files') {
  console.error(`--sink: expected count or files, got ${JSON.stringify(SINK_MODE)}`);
  process.exit(2);
}
const POSTFIX = args.tools !== 'node' && SMTP_SOURCE !== null && SMTP_SINK !== null;
/** Why the Postfix backup MX row cannot run (null: it runs). */
const POSTFIX_MX_MISSING = args['without-postfix'] ? 'left out (--without-postfix)' : postfixUnavailable(findTool);
if (args.tools === 'postfix' && !POSTFIX) {
  console.error('smtp-source / smtp-sink not found: install the Debian package "postfix" (apt-get install postfix), or use --tools node');
  process.exit(1);
}
if (args.tools === 'auto' && !POSTFIX) {
  console.log('note: smtp-source / smtp-sink not found (Debian package "postfix"); using the nodemailer / smtp-server fallback (bench/fallback.ts)');
}

// ---- cleanup that also runs on Ctrl-C ----------------------------------------------------------

const cleanups: (() => void)[] = [];
/**
 * Each run's temporary directory (spool, sink files, Postfix's queue) is removed when the bench
 * ends, not when its run does. On this machine's ext4 (no journal), creating a file skips every inode
 * deleted in the last 30 s of its block group, reading each one's inode (ext4 recently_deleted()):
 * removing one run's 10,000 files made the next run's primary (smtp-sink -d) and Postfix's queue
 * pay for it, and the row run after another's cleanup lost up to half its flush rate.
 */
const afterAll: (() => void)[] = [];
function removeAll(): void {
  for (const remove of afterAll.splice(0)) remove();
}
function onSignal(signal: NodeJS.Signals) {
  console.error(`\n${signal}: cleaning up`);
  for (const cleanup of [...cleanups.splice(0).reverse(), ...afterAll.splice(0)]) {
    try {
      cleanup();
    } catch {
      // best effort
    }
  }
  process.exit(130);
}
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

// ---- helpers ----------------------------------------------------------------------------------

const seconds = (ms: number) => (ms / 1000).toFixed(1);
const rate = (n: number, ms: number) => (ms > 0 ? Math.round((n * 1000) / ms) : 0);

async function waitUntil<T>(what: string, timeoutMs: number, everyMs: number, check: () => T | Promise<T>): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`gave up after ${seconds(timeoutMs)} s waiting for ${what}`);
    await sleep(everyMs);
  }
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Peak resident set size in MB (VmHWM), or null where /proc is unavailable. */
function peakRssMb(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const match = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Math.round(Number(match[1]) / 1024) : null;
  } catch {
    return null;
  }
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on Linux). */
const TICKS_PER_S = 100;

/**
 * CPU seconds a set of processes has used: user + system, plus what their reaped children used
 * (Postfix's master reaps its smtp processes), read from /proc/PID/stat; 0 for one that is gone.
 */
function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after "(comm) ": state is 3rd, utime 14th, stime 15th, cutime 16th, cstime 17th.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
    } catch {
      // gone
    }
  }
  return ticks / TICKS_PER_S;
}

/** PIDs of RabbitMQ's Erlang VM (beam.smp), whose work over RabbitMQ counts against that row. */
function brokerPids(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (/^beam/.test(readFileSync(`/proc/${name}/comm`, 'utf8'))) pids.push(Number(name));
    } catch {
      // gone
    }
  }
  return pids;
}

/** SIGTERM, then SIGKILL after `graceMs`. */
async function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}


/**
 * The flush, timed from `start` (the moment the primary listens) until the sink holds `accepted`
 * messages, and when the first one came; a phase that runs out is told to `warn` and timed as it is.
 */
async function timeFlush(sink: Sink, accepted: number, start: number, warn: (text: string) => void): Promise<{ firstMs: number | null; flushMs: number }> {
  let firstMs: number | null = null;
  try {
    await waitUntil(`the primary to hold ${accepted} messages`, PHASE_MS, 20, () => {
      const n = sink.delivered();
      if (n > 0 && firstMs === null) firstMs = performance.now() - start;
      return n >= accepted;
    });
  } catch (error) {
    warn((error as Error).message);
  }
  return { firstMs, flushMs: performance.now() - start };
}

function countFiles(dir: string): number {
  try {
    return readdirSync(dir).length;
  } catch {
    return 0;
  }
}

/** Run the load generator; resolves with how many got 250 (null: smtp-source stopped on an error). */
async function runSource(port: number): Promise<{ accepted: number | null; failures: string[] }> {
  if (!POSTFIX) {
    const result = await nodeSource({ port, messages: MESSAGES, sessions: SESSIONS, size: SIZE, reuse: args.reuse, from: FROM, to: TO });
    return { accepted: result.accepted, failures: [...result.errors].map(([text, n]) => `${n} x ${text}`) };
  }
  const argv = [...(args.reuse ? ['-d'] : []), '-s', String(SESSIONS), '-m', String(MESSAGES), '-l', String(SIZE), '-f', FROM, '-t', TO, `127.0.0.1:${port}`];
  const child = spawn(SMTP_SOURCE ?? 'smtp-source', argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.push(() => child.kill('SIGKILL'));
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const timer = setTimeout(() => {
    output += `smtp-source: killed by the bench after ${seconds(PHASE_MS)} s\n`;
    child.kill('SIGKILL');
  }, PHASE_MS);
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  const failures = output.split('\n').filter((line) => line.trim() !== '');
  // smtp-source exits non-zero on the first reply that is not 2xx ("fatal: ... rejected: 451 ...").
  return { accepted: code === 0 && failures.length === 0 ? MESSAGES : null, failures: code === 0 ? failures : [...failures, `smtp-source exit code ${code}`] };
}

/** The primary of the flush phase, and how many messages it has been given (duplicates count). */
interface Sink {
  child: ChildProcess;
  delivered(): number;
}

function startSink(port: number, dir: string): Sink {
  if (!POSTFIX) {
    const child = spawn(process.execPath, [join(ROOT, 'bench', 'fallback.ts'), 'sink', dir, String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
    child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`sink: ${chunk.toString()}`));
    return { child, delivered: () => countFiles(dir) };
  }
  const user = process.getuid?.() === 0 ? ['-u', 'nobody'] : [];
  const files = SINK_MODE === 'files';
  // -c prints "\rsess=N quit=N mesg=N" at every event: mesg counts completed DATA transactions.
  const child = spawn(SMTP_SINK ?? 'smtp-sink', [...user, ...(files ? ['-d', `${dir}/m.`] : ['-c']), `127.0.0.1:${port}`, '1024'], { stdio: ['ignore', files ? 'ignore' : 'pipe', 'pipe'] });
  child.stderr?.on('data', (chunk: Buffer) => process.stderr.write(`sink: ${chunk.toString()}`));
  if (files) return { child, delivered: () => countFiles(dir) };
  let count = 0;
  let tail = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = tail + chunk.toString('latin1');
    const at = text.lastIndexOf('mesg=');
    const match = at >= 0 ? /^mesg=(\d+)\r/.exec(text.slice(at)) : null;
    if (match) count = Number(match[1]);
    tail = text.slice(-40);
  });
  return { child, delivered: () => count };
}

async function totals(store: Store): Promise<{ messages: number; queued: number }> {
  const stats = await store.stats();
  return { messages: stats.messages, queued: Object.values(stats.queued).reduce((a, b) => a + b, 0) };
}

// ---- one run ----------------------------------------------------------------------------------

interface Result {
  mode: string;
  accepted: number;
  acceptMs: number;
  spoolLagMs: number;
  delivered: number;
  flushMs: number;
  firstMs: number | null;
  /** CPU seconds the MTA under test used while the load generator ran (over RabbitMQ: with the broker's). */
  acceptCpu: { mta: number; broker: number };
  /** CPU seconds used during the flush: the MTA under test (over RabbitMQ: with the broker's), and the primary. */
  flushCpu: { mta: number; sink: number; broker: number };
  rss: { name: string; mb: number | null }[];
  warnings: string[];
}

/** A row's output: `say` prints a line under its label, `warn` also keeps it for the summary. */
function reporter(label: string) {
  const warnings: string[] = [];
  const say = (text: string) => console.log(`[${label}] ${text}`);
  const warn = (text: string) => {
    warnings.push(text);
    say(`WARNING: ${text}`);
  };
  return { say, warn, warnings };
}

async function runMode(mode: 'one' | 'rabbit'): Promise<Result> {
  const label = mode === 'one' ? 'one-process' : 'rabbitmq';
  const { say, warn, warnings } = reporter(label);

  const dir = tempDir('backupmx-bench-');
  chmodSync(dir.path, 0o755); // smtp-sink runs as nobody
  const sinkDir = join(dir.path, 'sink');
  mkdirSync(sinkDir);
  chmodSync(sinkDir, 0o777);
  const dataDir = join(dir.path, 'data');
  const logs = join(dir.path, 'logs');
  const services: Service[] = [];
  let sink: Sink | null = null;
  let store: Store | null = null;
  let vhost: ReturnType<typeof createVhost> | null = null;
  const removeDir = () => (args.keep ? undefined : dir.remove());
  afterAll.push(removeDir);
  try {
    if (mode === 'rabbit') {
      vhost = createVhost();
      const { remove } = vhost;
      cleanups.push(remove);
    }
    const smtpPort = await freePort();
    const primaryPort = await freePort();
    const env: Record<string, string> = {
      ...serviceEnv({ primary: primaryPort, smtp: smtpPort }, dataDir),
      LOG_LEVEL: 'warn',
      HTTP_HOST: '127.0.0.1',
      ...(GREETING_DELAY !== undefined ? { GREETING_DELAY } : {}),
      ...(vhost ? { AMQP_URL: vhost.url } : {}),
      ...(args.profile ? { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${args.profile}` } : {}),
      ...EXTRA_ENV,
    };
    const entries = mode === 'one' ? (['all'] as const) : (['spool', 'health', 'deliverer', 'ingress'] as const);
    for (const entry of entries) {
      const service = spawnService(entry === 'all' ? 'backupmx' : entry, entry, { ...env, HTTP_PORT: String(await freePort()) }, logs);
      services.push(service);
      cleanups.push(() => service.child.kill('SIGKILL'));
      await waitReady(service, 60_000);
    }
    say(`started ${services.map((s) => `${s.name} (pid ${s.child.pid})`).join(', ')}; ingress on 127.0.0.1:${smtpPort}, primary 127.0.0.1:${primaryPort} (down)`);

    const monitor = services.find((s) => s.name === 'backupmx' || s.name === 'health');
    try {
      await waitUntil('the health monitor to report the primary down', 30_000, 200, async () => {
        const body = (await (await fetch(`http://127.0.0.1:${monitor?.httpPort}/status`)).json()) as { targets?: Record<string, { state?: string }> };
        return body.targets?.[`127.0.0.1:${primaryPort}`]?.state === 'down';
      });
    } catch (error) {
      warn(`${(error as Error).message}; going on`);
    }
    store = await openSqliteStore(join(dataDir, 'spool.sqlite'));
    const spoolStore = store;

    // Accept phase.
    say(`accept: ${MESSAGES} messages, ${SESSIONS} sessions, ${SIZE} body bytes, ${args.reuse ? 'connections reused' : 'one message per connection'}`);
    const ours = services.map((s) => s.child.pid as number);
    const broker = mode === 'rabbit' ? brokerPids() : [];
    const acceptCpuBefore = { mta: cpuSeconds(ours), broker: cpuSeconds(broker) };
    const acceptStart = performance.now();
    const source = await runSource(smtpPort);
    const acceptMs = performance.now() - acceptStart;
    const acceptCpu = { mta: cpuSeconds(ours) - acceptCpuBefore.mta, broker: cpuSeconds(broker) - acceptCpuBefore.broker };
    for (const line of source.failures.slice(0, 10)) say(`load generator: ${line}`);
    if (source.failures.length > 10) say(`load generator: ... ${source.failures.length - 10} more lines`);

    // Wait until the spool holds every accepted message (RabbitMQ mode: the spool may lag the 250s).
    let accepted: number;
    const lagStart = performance.now();
    if (source.accepted !== null) {
      const expected = source.accepted;
      await waitUntil(`the spool to hold ${expected} messages`, PHASE_MS, 50, async () => (await totals(spoolStore)).messages >= expected);
      accepted = expected;
    } else {
      // smtp-source stopped early: count what reached the spool once it stops growing.
      let last = -1;
      let stableSince = performance.now();
      await waitUntil('the spool to stop growing', PHASE_MS, 200, async () => {
        const { messages } = await totals(spoolStore);
        if (messages !== last) [last, stableSince] = [messages, performance.now()];
        return performance.now() - stableSince > 5_000;
      });
      accepted = last;
      warn(`the load generator stopped on an error; the spool holds ${accepted} messages`);
    }
    const spoolLagMs = performance.now() - lagStart;
    const spooled = await totals(spoolStore);
    if (accepted !== MESSAGES) warn(`only ${accepted} of ${MESSAGES} messages were accepted`);
    if (spooled.messages !== accepted) warn(`the spool holds ${spooled.messages} messages, ${accepted} were accepted`);
    if (countFiles(sinkDir) !== 0) warn('the sink directory is not empty before the flush');
    say(`accept: ${accepted} in ${seconds(acceptMs)} s = ${rate(accepted, acceptMs)} msg/s; spool held them all ${seconds(spoolLagMs)} s later (${spooled.queued} deliveries queued)`);

    // Flush phase: from the primary listening until it has every accepted message.
    sink = startSink(primaryPort, sinkDir);
    const sinkChild = sink.child;
    cleanups.push(() => sinkChild.kill('SIGKILL'));
    await waitUntil('the primary (sink) to listen', 10_000, 2, async () => {
      if (sinkChild.exitCode !== null) throw new Error(`the sink exited with ${sinkChild.exitCode}`);
      return canConnect(primaryPort);
    });
    const cpuBefore = { mta: cpuSeconds(ours), broker: cpuSeconds(broker) };
    const { firstMs, flushMs } = await timeFlush(sink, accepted, performance.now(), warn);
    const flushCpu = { mta: cpuSeconds(ours) - cpuBefore.mta, sink: cpuSeconds([sinkChild.pid as number]), broker: cpuSeconds(broker) - cpuBefore.broker };
    // Let the deliverer record its last deliveries, then check the counts.
    try {
      await waitUntil('the spool to empty', 60_000, 100, async () => (await totals(spoolStore)).messages === 0);
    } catch (error) {
      warn(`${(error as Error).message}: ${JSON.stringify(await spoolStore.stats())}`);
    }
    await sleep(500);
    const delivered = sink.delivered();
    if (delivered < accepted) warn(`the primary got ${delivered} of ${accepted} accepted messages`);
    if (delivered > accepted) warn(`the primary got ${delivered} messages for ${accepted} accepted (${delivered - accepted} duplicates)`);
    say(`flush: ${delivered} in ${seconds(flushMs)} s = ${rate(Math.min(delivered, accepted), flushMs)} msg/s (first message after ${firstMs === null ? '-' : seconds(firstMs)} s)`);

    const rss = services.map((s) => ({ name: s.name, mb: peakRssMb(s.child.pid) }));
    for (const s of services) if (s.child.exitCode !== null) warn(`${s.name} exited early with ${s.child.exitCode}`);
    return { mode: label, accepted, acceptMs, spoolLagMs, delivered, flushMs, firstMs, acceptCpu, flushCpu, rss, warnings };
  } finally {
    await store?.close();
    for (const service of [...services].reverse()) await stopChild(service.child);
    if (sink) await stopChild(sink.child);
    vhost?.remove();
    if (args.keep) say(`kept ${dir.path} (logs in ${logs})`);
    cleanups.length = 0;
  }
}

/**
 * Proportional set size of a process now, in MB, or 0 when it is gone. Postfix runs ~100 small
 * processes sharing their libraries: summing their RSS would count the shared pages 100 times.
 */
function pssMb(pid: number): number {
  try {
    const match = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return match ? Number(match[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/** The same load through Postfix as a backup MX of its own; flushed with `postqueue -f` once the primary listens. */
async function runPostfix(): Promise<Result> {
  const label = 'postfix';
  const { say, warn, warnings } = reporter(label);
  const dir = tempDir('backupmx-bench-postfix-');
  chmodSync(dir.path, 0o755);
  const sinkDir = join(dir.path, 'sink');
  mkdirSync(sinkDir);
  chmodSync(sinkDir, 0o777);
  let postfix: PostfixInstance | null = null;
  let sink: Sink | null = null;
  const removeDir = () => (args.keep ? undefined : dir.remove());
  afterAll.push(removeDir);
  // Peak of the summed PSS of all of Postfix's processes (master, smtpd, cleanup, qmgr, smtp...), sampled.
  let peak = 0;
  let processes = 0;
  const sampler = setInterval(() => {
    const pids = postfix?.pids() ?? [];
    processes = Math.max(processes, pids.length);
    peak = Math.max(peak, pids.reduce((sum, pid) => sum + pssMb(pid), 0));
  }, 250);
  try {
    const smtpPort = await freePort();
    const primaryPort = await freePort();
    postfix = startPostfix(join(dir.path, 'postfix'), smtpPort, primaryPort);
    const instance = postfix;
    cleanups.push(() => instance.stop());
    await waitUntil('Postfix smtpd to listen', 30_000, 20, () => canConnect(smtpPort));
    say(`started postfix -c ${join(dir.path, 'postfix', 'etc')} (master pid ${instance.pids()[0] ?? '?'}); smtpd on 127.0.0.1:${smtpPort}, primary 127.0.0.1:${primaryPort} (down)`);

    say(`accept: ${MESSAGES} messages, ${SESSIONS} sessions, ${SIZE} body bytes, ${args.reuse ? 'connections reused' : 'one message per connection'}`);
    const acceptCpuBefore = cpuSeconds(instance.pids());
    const acceptStart = performance.now();
    const source = await runSource(smtpPort);
    const acceptMs = performance.now() - acceptStart;
    const acceptCpu = { mta: cpuSeconds(instance.pids()) - acceptCpuBefore, broker: 0 };
    for (const line of source.failures.slice(0, 10)) say(`load generator: ${line}`);
    const lagStart = performance.now();
    let accepted = source.accepted ?? 0;
    if (source.accepted === null) {
      await sleep(5_000);
      accepted = instance.queued();
      warn(`the load generator stopped on an error; the queue holds ${accepted} messages`);
    }
    // Every message tried once against the down primary and deferred, as ours are queued.
    await waitUntil(`Postfix to defer ${accepted} messages`, PHASE_MS, 50, () => instance.queued() >= accepted && instance.active() === 0);
    const spoolLagMs = performance.now() - lagStart;
    if (accepted !== MESSAGES) warn(`only ${accepted} of ${MESSAGES} messages were accepted`);
    say(`accept: ${accepted} in ${seconds(acceptMs)} s = ${rate(accepted, acceptMs)} msg/s; all deferred ${seconds(spoolLagMs)} s later`);

    sink = startSink(primaryPort, sinkDir);
    const sinkChild = sink.child;
    cleanups.push(() => sinkChild.kill('SIGKILL'));
    await waitUntil('the primary (sink) to listen', 10_000, 2, async () => {
      if (sinkChild.exitCode !== null) throw new Error(`the sink exited with ${sinkChild.exitCode}`);
      return canConnect(primaryPort);
    });
    const cpuBefore = cpuSeconds(instance.pids());
    const flushStart = performance.now();
    instance.flush();
    const { firstMs, flushMs } = await timeFlush(sink, accepted, flushStart, warn);
    const flushCpu = { mta: cpuSeconds(instance.pids()) - cpuBefore, sink: cpuSeconds([sinkChild.pid as number]), broker: 0 };
    try {
      await waitUntil('the Postfix queue to empty', 60_000, 100, () => instance.queued() === 0);
    } catch (error) {
      warn((error as Error).message);
    }
    await sleep(500);
    const delivered = sink.delivered();
    if (delivered < accepted) warn(`the primary got ${delivered} of ${accepted} accepted messages`);
    if (delivered > accepted) warn(`the primary got ${delivered} messages for ${accepted} accepted (${delivered - accepted} duplicates)`);
    say(`flush: ${delivered} in ${seconds(flushMs)} s = ${rate(Math.min(delivered, accepted), flushMs)} msg/s (first message after ${firstMs === null ? '-' : seconds(firstMs)} s)`);
    return { mode: label, accepted, acceptMs, spoolLagMs, delivered, flushMs, firstMs, acceptCpu, flushCpu, rss: [{ name: `${processes} processes, PSS sum`, mb: Math.round(peak) }], warnings };
  } finally {
    clearInterval(sampler);
    postfix?.stop();
    if (sink) await stopChild(sink.child);
    if (args.keep) say(`kept ${dir.path} (maillog in ${join(dir.path, 'postfix', 'maillog')})`);
    cleanups.length = 0;
  }
}

// ---- main -------------------------------------------------------------------------------------

const nodeVersion = process.version;
console.log(`machine: ${availableParallelism()} cpus (${cpus()[0]?.model ?? 'unknown'}), ${Math.round(totalmem() / 2 ** 30)} GB RAM, node ${nodeVersion}`);
if (POSTFIX) {
  let version = '';
  try {
    version = execFileSync(findTool('postconf') ?? 'postconf', ['-d', '-h', 'mail_version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    // postconf may be missing
  }
  console.log(`load: ${SMTP_SOURCE} ${args.reuse ? '-d ' : ''}-s ${SESSIONS} -m ${MESSAGES} -l ${SIZE} -f ${FROM} -t ${TO}; primary: ${SMTP_SINK} ${SINK_MODE === 'files' ? '-d DIR/m.' : '-c (counting, no files)'} (postfix ${version || 'version unknown'})`);
} else {
  console.log(`load: bench/fallback.ts nodemailer, ${SESSIONS} sessions, ${MESSAGES} messages, ${SIZE} body bytes${args.reuse ? ', connections reused' : ''}; primary: smtp-server sink (bench/fallback.ts)`);
}
console.log(
  `settings: RELAY_DOMAINS=example.test LOG_LEVEL=warn SMTP_HOST=127.0.0.1 GREETING_DELAY=${GREETING_DELAY ?? '(unset: service default)'}${Object.entries(EXTRA_ENV).map(([k, v]) => ` ${k}=${v}`).join('')}; other settings default; SQLite under a temp DATA_DIR; started as npm start does (${Object.entries(MALLOC_ENV).map(([k, v]) => `${k}=${v} `).join('')}node ${V8_FLAGS.join(' ')})`,
);

if (POSTFIX_MX_MISSING) console.log(`postfix: not run: ${POSTFIX_MX_MISSING}; our figures alone`);
else console.log('postfix: a backup MX of its own (bench/postfix.ts: postfix -c DIR, Postfix defaults, relay_domains=example.test), flushed with postqueue -f when the primary listens');

type Row = 'postfix' | 'one-process' | 'rabbitmq';
const ROWS: Row[] = [...(POSTFIX_MX_MISSING ? [] : (['postfix'] as const)), ...MODES.map((m) => (m === 'one' ? 'one-process' : 'rabbitmq') as Row)];
const results = new Map<Row, Result[]>(ROWS.map((row) => [row, []]));
let failed = false;
for (let round = 1; round <= ROUNDS; round++) {
  if (ROUNDS > 1) console.log(`\n== round ${round} of ${ROUNDS}`);
  for (const row of ROWS) {
    try {
      results.get(row)?.push(row === 'postfix' ? await runPostfix() : await runMode(row === 'one-process' ? 'one' : 'rabbit'));
    } catch (error) {
      failed = true;
      console.log(`[${row}] FAILED: ${(error as Error).message}`);
    }
  }
}

const acceptRate = (r: Result) => rate(r.accepted, r.acceptMs);
const flushRate = (r: Result) => rate(Math.min(r.delivered, r.accepted), r.flushMs);
function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] ?? 0) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}
function table(rows: string[][]): void {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0))) ?? [];
  for (const row of rows) console.log(row.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd());
}

const all = [...results.values()].flat();
if (all.length > 0) {
  console.log('\nevery run:');
  table([
    ['mode', 'accepted', 'accept s', 'accept msg/s', 'queue lag s', 'delivered', 'flush s', 'flush msg/s', 'first msg s', 'accept CPU s: MTA / broker', 'flush CPU s: MTA / broker / primary', 'peak RSS MiB'],
    ...all.map((r) => [r.mode, String(r.accepted), seconds(r.acceptMs), String(acceptRate(r)), seconds(r.spoolLagMs), String(r.delivered), seconds(r.flushMs), String(flushRate(r)), r.firstMs === null ? '-' : seconds(r.firstMs), cpuText({ ...r.acceptCpu, sink: null }, 1), cpuText(r.flushCpu, 1), rssText(r)]),
  ]);
  const medians = ROWS.filter((row) => (results.get(row)?.length ?? 0) > 0).map((row) => {
    const runs = results.get(row) ?? [];
    const rss = (runs[0]?.rss ?? []).map((p, i) => ({ name: p.name, mb: median(runs.map((r) => r.rss[i]?.mb ?? 0)) }));
    // CPU per delivered message, in ms: what each delivery cost the MTA (and broker) and the primary.
    const perMessage = (pick: (r: Result) => number, n: (r: Result) => number) => median(runs.map((r) => (pick(r) * 1000) / Math.max(1, n(r))));
    const cpu = { mta: perMessage((r) => r.flushCpu.mta, (r) => r.delivered), broker: perMessage((r) => r.flushCpu.broker, (r) => r.delivered), sink: perMessage((r) => r.flushCpu.sink, (r) => r.delivered) };
    const acceptCpu = { mta: perMessage((r) => r.acceptCpu.mta, (r) => r.accepted), broker: perMessage((r) => r.acceptCpu.broker, (r) => r.accepted), sink: null };
    return { row, n: runs.length, accept: median(runs.map(acceptRate)), flush: median(runs.map(flushRate)), first: median(runs.map((r) => r.firstMs ?? 0)), acceptCpu, cpu, rss, peak: Math.max(...runs.map((r) => rssSum(r))) };
  });
  const postfix = medians.find((m) => m.row === 'postfix');
  const ratio = (ours: number, theirs: number | undefined) => (theirs ? `${(ours / theirs).toFixed(2)}x` : '-');
  console.log(`\nmedian of ${ROUNDS} round${ROUNDS > 1 ? 's' : ''} (${MESSAGES} x ${SIZE} B, ${SESSIONS} sessions, ${args.reuse ? 'reused connections' : '1 msg/connection'}, GREETING_DELAY=${GREETING_DELAY ?? 'default'}, ${POSTFIX ? 'smtp-source/smtp-sink' : 'node fallback'}, ${availableParallelism()} cpus, node ${nodeVersion}):`);
  table([
    ['mode', 'accept msg/s', 'flush msg/s', 'first msg s', 'accept vs postfix', 'flush vs postfix', 'accept CPU ms/msg: MTA / broker', 'flush CPU ms/msg: MTA / broker / primary', 'peak RSS MiB (median; highest sum)'],
    ...medians.map((m) => [
      m.row,
      String(Math.round(m.accept)),
      String(Math.round(m.flush)),
      seconds(m.first),
      m.row === 'postfix' ? '1.00x' : ratio(m.accept, postfix?.accept),
      m.row === 'postfix' ? '1.00x' : ratio(m.flush, postfix?.flush),
      cpuText(m.acceptCpu, 2),
      cpuText(m.cpu, 2),
      `${rssText({ rss: m.rss } as Result)}; highest sum ${m.peak}`,
    ]),
  ]);
  if (!postfix) console.log(`(no Postfix row: ${POSTFIX_MX_MISSING ?? 'it failed'}; no ratios)`);
  for (const r of all) for (const w of r.warnings) console.log(`WARNING (${r.mode}): ${w}`);
}

function cpuText(cpu: { mta: number; broker: number; sink: number | null }, digits: number): string {
  return `${cpu.mta.toFixed(digits)} / ${cpu.broker > 0 ? cpu.broker.toFixed(digits) : '-'}${cpu.sink === null ? '' : ` / ${cpu.sink.toFixed(digits)}`}`;
}
function rssSum(r: Result): number {
  return r.rss.reduce((a, p) => a + (p.mb ?? 0), 0);
}
function rssText(r: Result): string {
  if (r.rss.length === 1) return `${r.rss[0]?.name ?? 'all'}=${r.rss[0]?.mb ?? '?'}`;
  return `${r.rss.map((p) => `${p.name}=${p.mb ?? '?'}`).join(' ')} sum=${rssSum(r)}`;
}

removeAll();
process.exit(failed || all.some((r) => r.warnings.length > 0) ? 1 : 0);
