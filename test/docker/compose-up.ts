/**
 * `npm run test:compose` (issue 13): the project's image built and the compose stack run on a real
 * Docker engine, checked as a new user would: every container healthy; the demo (a message reaches
 * the demo primary; the primary stopped, five messages get 250 and wait; started again, all five
 * arrive); RabbitMQ's memory watermark; `--scale deliverer=3`; `restart rabbitmq` with mail queued
 * loses nothing; `down` then `up -d` keeps queued mail; the admin CLI through `exec`. Everything it
 * made is removed at the end (`down -v`, the image tag).
 *
 * Not part of `npm test` (minutes, and a Docker engine): .ci/run runs it when an engine can be had.
 * It is not named *.test.ts, so neither `npm test` nor the Deno suite picks it up a second time.
 *
 * Where the pinned images cannot be pulled (no registry here) it builds stand-ins with
 * ../shared/docker-standins/build.sh and runs compose through its compose.sh (Debian's compose v1
 * and an override: no MongoDB and no Grafana exist as stand-ins, so the store is SQLite in a shared
 * volume and Grafana does not run); it says so in its output. The project's own image, Dockerfile
 * and docker-compose.yml are used as they are. RabbitMQ gets a password holding @ : / % # and a
 * space (defect 2), set the way a user sets it: RABBITMQ_PASSWORD, nothing encoded.
 */
import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseEnv } from 'node:util';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import { composeV2, engineAnswers, must, run, STANDINS, standinsPresent } from '../support/docker.ts';
import { ROOT } from '../support/processes.ts';
import { freePort, waitFor } from '../support/util.ts';

const PROJECT = `bmxtest${randomBytes(3).toString('hex')}`;
const IMAGE = `backupmx-composetest:${PROJECT}`;
const PASSWORD = 'p@ss:w/rd%40 #1 x';
const dotenv = parseEnv(readFileSync(join(ROOT, '.env'), 'utf8')) as Record<string, string>;
const MIN = 60_000;

interface Container {
  id: string;
  service: string;
  state: string;
  health: string;
  ip: string;
}

describe('docker compose on a real engine (npm run test:compose)', () => {
  let standins = false;
  let v2 = false;
  let smtpPort = 0;
  let env: NodeJS.ProcessEnv = {};
  let sent = 0;

  /** docker compose as a user on this machine runs it: the project's file, or compose.sh with the stand-ins' override. */
  function compose(args: string[], timeoutMs = 5 * MIN): Promise<string> {
    if (standins || !v2) return must('bash', [join(STANDINS, 'compose.sh'), ...args], { env, timeoutMs });
    return must('docker', ['compose', ...args], { env, timeoutMs });
  }

  async function containers(): Promise<Container[]> {
    const ids = (await must('docker', ['ps', '-aq', '--filter', `label=com.docker.compose.project=${PROJECT}`])).split('\n').filter(Boolean);
    if (ids.length === 0) return [];
    const format = '{{.Id}}\t{{index .Config.Labels "com.docker.compose.service"}}\t{{.State.Status}}\t{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}\t{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}';
    return (await must('docker', ['inspect', '--format', format, ...ids])).trim().split('\n').map((line) => {
      const [id = '', service = '', state = '', health = '', ip = ''] = line.split('\t');
      return { id, service, state, health, ip: ip.trim() };
    });
  }

  /** Wait until exactly these services run, `count` containers each, every one healthy (a loaded 2-core machine took 7 minutes). */
  async function healthy(expected: Record<string, number>, what: string, timeoutMs = 10 * MIN): Promise<Container[]> {
    let last: Container[] = [];
    try {
      return await waitFor(what, async () => {
        last = (await containers()).filter((c) => c.state === 'running');
        const ok = Object.entries(expected).every(([service, count]) => last.filter((c) => c.service === service && c.health === 'healthy').length === count);
        return ok && last.length === Object.values(expected).reduce((a, b) => a + b, 0) ? last : null;
      }, timeoutMs, 2000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\ncontainers: ${last.map((c) => `${c.service} ${c.state} ${c.health}`).join(', ')}`);
    }
  }

  /** Send `count` messages, each to a recipient of its own; returns their subjects (and recipients: user<n>@example.test). */
  async function send(label: string, count: number): Promise<{ subject: string; to: string }[]> {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: smtpPort, secure: false, ignoreTLS: true, connectionTimeout: 30_000, greetingTimeout: 30_000 });
    try {
      const messages: { subject: string; to: string }[] = [];
      for (let i = 0; i < count; i++) {
        const subject = `${PROJECT} ${label} ${++sent}`;
        const to = `user${sent}@example.test`;
        const info = await transport.sendMail({ envelope: { from: 'sender@origin.test', to: [to] }, raw: `From: <sender@origin.test>\r\nTo: <${to}>\r\nSubject: ${subject}\r\n\r\nbody of ${subject}\r\n` });
        assert.match(info.response, /^250 2\.0\.0 Ok: queued as /, `${subject}: ${info.response}`);
        messages.push({ subject, to });
      }
      return messages;
    } finally {
      transport.close();
    }
  }

  /** Subjects of what the demo primary got: Mailpit's API, or the stand-in's smtp-sink files. */
  async function atPrimary(): Promise<string[]> {
    if (!standins) {
      const address = (await compose(['--profile', 'demo', 'port', 'mailpit', '8025'])).trim();
      const body = (await (await fetch(`http://${address}/api/v1/messages?limit=1000`)).json()) as { messages: { Subject: string }[] };
      return body.messages.map((m) => m.Subject);
    }
    const mailpit = (await containers()).find((c) => c.service === 'mailpit' && c.state === 'running');
    if (!mailpit) return [];
    const found = await run('docker', ['exec', mailpit.id, 'sh', '-c', 'grep -rh "^Subject: " /sink || true']);
    return found.stdout.split('\n').filter(Boolean).map((line) => line.replace(/^Subject: /, '').trim());
  }

  async function arrive(messages: { subject: string }[], what: string, timeoutMs = 3 * MIN): Promise<void> {
    const subjects = messages.map((m) => m.subject);
    await waitFor(what, async () => {
      const got = await atPrimary();
      return subjects.every((s) => got.includes(s));
    }, timeoutMs, 2000);
    const got = await atPrimary();
    for (const s of subjects) assert.equal(got.filter((g) => g === s).length, 1, `${s} arrived once`);
  }

  /** The admin CLI in the spool container, as the README says: docker compose exec spool node bin/backupmx.js ... */
  async function cli(...args: string[]): Promise<string> {
    return compose(['exec', '-T', 'spool', 'node', 'bin/backupmx.js', ...args], 2 * MIN);
  }

  /** Recipients with a queued delivery, as `backupmx queue --state queued --json` shows them. */
  async function queued(): Promise<string[]> {
    const { items } = JSON.parse(await cli('queue', '--state', 'queued', '--limit', '1000', '--json')) as { items: { deliveries: { recipient: string; state: string }[] }[] };
    return items.flatMap((item) => item.deliveries.filter((d) => d.state === 'queued').map((d) => d.recipient)).sort();
  }
  const recipients = (messages: { to: string }[]) => messages.map((m) => m.to).sort();

  const base = (): Record<string, number> => ({ rabbitmq: 1, mongodb: 1, jaeger: 1, prometheus: 1, ingress: 1, spool: 1, health: 1, deliverer: 2, ...(standins ? {} : { grafana: 1 }) });

  before(async () => {
    if (!(await engineAnswers())) throw new Error('test:compose: no Docker engine answers (docker info failed): start dockerd, or run ../shared/docker-standins/build.sh, which installs and starts one');
    v2 = await composeV2();
    const pinned = [...new Set([...Object.entries(dotenv).filter(([key]) => key.endsWith('_IMAGE') && key !== 'BACKUPMX_IMAGE').map(([, image]) => image), ...[...readFileSync(join(ROOT, 'Dockerfile'), 'utf8').matchAll(/^FROM (\S+)/gm)].map((m) => m[1] ?? '')])];
    const unpulled: string[] = [];
    for (const image of pinned) if ((await run('docker', ['pull', '-q', image], { timeoutMs: 5 * MIN })).code !== 0) unpulled.push(image);
    if (unpulled.length > 0) {
      if (!standinsPresent()) throw new Error(`test:compose: the pinned images ${unpulled.join(', ')} cannot be pulled and ${STANDINS} (stand-ins) is absent`);
      standins = true;
      console.log(`# test:compose: the pinned images cannot be pulled here (${unpulled.join(', ')}): using stand-ins from ${STANDINS} (build.sh); no MongoDB and no Grafana stand-in exists, so the store is SQLite in a shared volume and Grafana does not run (its override.yml); see its README for what each stand-in is and is not`);
      await must('bash', [join(STANDINS, 'build.sh'), ROOT], { timeoutMs: 25 * MIN });
    } else {
      console.log(`# test:compose: every pinned image was pulled (${pinned.join(', ')}): the stack runs as a user runs it`);
    }
    if (!v2) console.log('# test:compose: this Docker CLI has no `compose` (v2): running Debian\'s docker-compose v1 through compose.sh');
    smtpPort = await freePort();
    env = {
      ...process.env,
      COMPOSE_PROJECT_NAME: PROJECT,
      BACKUPMX_IMAGE: IMAGE,
      SMTP_PUBLIC_PORT: `127.0.0.1:${smtpPort}`,
      // Web UIs on loopback, on ports the engine picks (no clash with a stack already running here).
      UI_BIND: '127.0.0.1',
      RABBITMQ_UI_PORT: '',
      JAEGER_UI_PORT: '',
      MAILPIT_UI_PORT: '',
      PROMETHEUS_UI_PORT: '',
      GRAFANA_UI_PORT: '',
      RABBITMQ_PASSWORD: PASSWORD,
    };
    const started = Date.now();
    await must('docker', ['build', '-q', '-t', IMAGE, '.'], { env, timeoutMs: 20 * MIN });
    console.log(`# test:compose: built ${IMAGE} from the Dockerfile in ${Math.round((Date.now() - started) / 1000)} s`);
  });

  after(async () => {
    if (!env.COMPOSE_PROJECT_NAME) return;
    const logs = await run(standins || !v2 ? 'bash' : 'docker', [...(standins || !v2 ? [join(STANDINS, 'compose.sh')] : ['compose']), '--profile', 'demo', 'logs', '--no-color', '--tail', '40'], { env });
    if (process.env.KEEP_COMPOSE_LOGS) console.log(logs.stdout.slice(-20_000));
    await run(standins || !v2 ? 'bash' : 'docker', [...(standins || !v2 ? [join(STANDINS, 'compose.sh')] : ['compose']), '--profile', 'demo', 'down', '-v', '--remove-orphans', '-t', '20'], { env, timeoutMs: 5 * MIN });
    await run('docker', ['image', 'rm', IMAGE]);
    const left = await containers();
    assert.deepEqual(left.map((c) => c.service), [], 'down -v removed every container');
  });

  it('`docker run IMAGE` keeps its spool in a volume, and a host folder the node user cannot write stops it with one line naming DATA_DIR', async () => {
    const volumes = JSON.parse(await must('docker', ['image', 'inspect', '--format', '{{json .Config.Volumes}}', IMAGE])) as Record<string, unknown>;
    assert.deepEqual(Object.keys(volumes), ['/app/data']);
    const folder = mkdtempSync(join(tmpdir(), 'backupmx-compose-'));
    try {
      chmodSync(folder, 0o755); // root's, as a folder made on the host by an administrator
      const ran = await run('docker', ['run', '--rm', '-v', `${folder}:/app/data`, '-e', 'RELAY_DOMAINS=example.test', '-e', 'PRIMARY=mail.example.test', IMAGE], { timeoutMs: 3 * MIN });
      assert.equal(ran.code, 78);
      assert.equal(ran.stderr, `backupmx all: configuration: DATA_DIR: ./data (/app/data) is not writable: permission denied (running as uid 1000; it belongs to uid ${statSync(folder).uid}, mode 0755)\n`);
    } finally {
      rmSync(folder, { recursive: true, force: true });
    }
  });

  it('starts every container healthy with `up -d` (demo profile), in a few minutes', async (t) => {
    const started = Date.now();
    await compose(['--profile', 'demo', 'up', '-d', '--no-build'], 10 * MIN);
    const running = await healthy({ ...base(), mailpit: 1 }, 'every container healthy');
    t.diagnostic(`healthy after ${Math.round((Date.now() - started) / 1000)} s: ${running.map((c) => c.service).sort().join(', ')}`);
  });

  it('RabbitMQ logs the services in with a password holding @ : / % # and a space, and throttles at 600 MiB, under its 1 GiB limit', async () => {
    const address = (await compose(['port', 'rabbitmq', '15672'])).trim();
    const auth = `Basic ${Buffer.from(`${dotenv.RABBITMQ_USER}:${PASSWORD}`).toString('base64')}`;
    const nodes = (await (await fetch(`http://${address}/api/nodes`, { headers: { authorization: auth } })).json()) as { mem_limit: number }[];
    assert.equal(nodes[0]?.mem_limit, 600 * 1024 * 1024, 'vm_memory_high_watermark.absolute from deploy/rabbitmq/backupmx.conf');
    const connections = (await (await fetch(`http://${address}/api/connections`, { headers: { authorization: auth } })).json()) as { user: string; client_properties: { connection_name?: string } }[];
    const names = new Set(connections.filter((c) => c.user === dotenv.RABBITMQ_USER).map((c) => c.client_properties.connection_name));
    assert.deepEqual([...names].sort(), ['backupmx-deliverer', 'backupmx-health', 'backupmx-ingress', 'backupmx-spool'], 'every service logged in as RABBITMQ_USER');
  });

  it('the demo: a message reaches the primary; the attempt names host and address; ingress logs the client address it saw', async (t) => {
    await arrive(await send('demo', 1), 'the demo message at Mailpit');
    const mailpit = (await containers()).find((c) => c.service === 'mailpit');
    const { items } = JSON.parse(await cli('queue', '--state', 'delivered', '--json')) as { items: { id: string }[] };
    assert.equal(items.length, 1);
    const detail = JSON.parse(await cli('show', items[0]?.id ?? '', '--json')) as { attempts: { nextHop: string; result: string }[] };
    assert.deepEqual(detail.attempts.map((a) => `${a.result} ${a.nextHop}`), [`delivered mailpit[${mailpit?.ip}]:1025`], 'the address the name had at that attempt');
    // Through docker-proxy (a loopback client), ingress sees the bridge gateway: README, Docker Compose.
    const gateway = (await must('docker', ['network', 'inspect', `${PROJECT}_default`, '--format', '{{range .IPAM.Config}}{{.Gateway}}{{end}}'])).trim();
    const seen = (await compose(['logs', '--no-color', 'ingress'])).split('\n').filter((line) => line.includes('"msg":"connect"')).map((line) => /"client":"([^"]+)"/.exec(line)?.[1]);
    assert.ok(seen.length >= 1, 'ingress logs each connection with the client address');
    assert.deepEqual([...new Set(seen)], [gateway], `a client on 127.0.0.1 appears as the bridge gateway ${gateway}`);
    t.diagnostic(`ingress saw the loopback client as ${gateway} (the bridge gateway): the documented docker-proxy caveat`);
  });

  it('the primary stopped: five messages get 250 and wait in the spool (admin CLI); started again: all five arrive', async () => {
    await compose(['--profile', 'demo', 'stop', 'mailpit']);
    const five = await send('while-down', 5);
    await waitFor('five messages queued', async () => (await queued()).length === 5, 2 * MIN, 3000);
    assert.deepEqual(await queued(), recipients(five));
    const status = await cli('status');
    assert.match(status, /mailpit:1025/, `status names the primary:\n${status}`);
    await compose(['--profile', 'demo', 'start', 'mailpit']);
    await arrive(five, 'the five waiting messages at Mailpit');
  });

  it('`restart rabbitmq` with mail queued loses nothing', async () => {
    await compose(['--profile', 'demo', 'stop', 'mailpit']);
    const three = await send('rabbitmq-restart', 3);
    await waitFor('three messages queued', async () => (await queued()).length === 3, 2 * MIN, 3000);
    await compose(['restart', 'rabbitmq']);
    await healthy(base(), 'every container healthy again after the broker restart');
    assert.deepEqual(await queued(), recipients(three));
    await compose(['--profile', 'demo', 'start', 'mailpit']);
    await arrive(three, 'the three messages at Mailpit after the broker restart');
  });

  it('`down` then `up -d` keeps queued mail', async () => {
    await compose(['--profile', 'demo', 'stop', 'mailpit']);
    const two = await send('down-up', 2);
    await waitFor('two messages queued', async () => (await queued()).length === 2, 2 * MIN, 3000);
    await compose(['--profile', 'demo', 'down', '-t', '20']);
    assert.deepEqual(await containers(), [], 'down removed the containers (not the volumes)');
    await compose(['up', '-d', '--no-build'], 10 * MIN);
    await healthy(base(), 'every container healthy after up -d');
    assert.deepEqual(await queued(), recipients(two), 'the queue survived down');
    await compose(['--profile', 'demo', 'up', '-d', '--no-build', 'mailpit']);
    await arrive(two, 'the two kept messages at Mailpit');
  });

  it('`--scale deliverer=3`: three healthy deliverers share the queue, each message delivered once', async (t) => {
    await compose(['--profile', 'demo', 'up', '-d', '--no-build', '--scale', 'deliverer=3'], 10 * MIN);
    const running = await healthy({ ...base(), deliverer: 3, mailpit: 1 }, 'three healthy deliverers');
    assert.equal(running.filter((c) => c.service === 'deliverer').length, 3);
    const ten = await send('scaled', 10);
    await arrive(ten, 'ten messages at Mailpit');
    const tens = new Set(recipients(ten));
    const by = new Map<string, number>();
    for (const line of (await compose(['logs', '--no-color', 'deliverer'])).split('\n')) {
      const to = /"msg":"delivered"/.test(line) ? /"to":"([^"]+)"/.exec(line)?.[1] : undefined;
      if (to && tens.has(to)) by.set(line.split('|')[0]?.trim() ?? '?', (by.get(line.split('|')[0]?.trim() ?? '?') ?? 0) + 1);
    }
    assert.equal([...by.values()].reduce((a, b) => a + b, 0), 10, 'ten deliveries logged, one per message');
    t.diagnostic(`the ten messages per deliverer container: ${[...by].map(([k, v]) => `${k}: ${v}`).join(', ')}`);
  });
});
