/**
 * docker-compose.yml, .env and the Dockerfile, checked without a Docker engine (in `npm test`; the
 * stack itself runs on a real engine in `npm run test:compose`, test/docker/compose-up.ts): parsed
 * and checked against what the README documents, then every backupmx service compose declares
 * started as a local process with the environment compose gives it (as many instances as it
 * declares), and mail passed end to end through them.
 *
 * What differs from `docker compose up`: service host names are 127.0.0.1; RabbitMQ is the local one
 * on a virtual host of this test's own; the primary (mailpit in the demo profile) is an smtp-server
 * in this test; Jaeger is a local OTLP sink; the services log in as guest (AMQP_USER/AMQP_PASSWORD
 * dropped); and MONGODB_URL is dropped, so the store is SQLite in one shared DATA_DIR, because no
 * MongoDB server can run here.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createServer as createTcpServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { configSchema, loadConfig } from '../shared/src/runtime/config.ts';
import { interpolate, loadCompose, type ComposeService } from './support/compose.ts';
import { assertAllDelivered, queueIdOf, sendMessages } from './support/mail.ts';
import { startPrimary } from './support/primary.ts';
import { ENTRY, ROOT, spawnService, waitReady, type Service } from './support/processes.ts';
import { createVhost } from './support/rabbitmq.ts';
import { tempDir, waitFor } from './support/util.ts';

const { raw, resolved, env: dotenv } = loadCompose();
const SETTINGS = new Set(Object.keys(configSchema.shape));
/** The backupmx services: the ones that run the project's own image. */
const OURS = Object.keys(raw.services).filter((name) => raw.services[name]?.image === '${BACKUPMX_IMAGE}');
const service = (name: string): ComposeService => resolved.services[name] ?? assert.fail(`compose has no service ${name}`);
/** The entry point a compose service runs, as test/support/processes.ts names it. */
const entryOf = (name: string) => {
  const entry = (Object.keys(ENTRY) as (keyof typeof ENTRY)[]).find((key) => ENTRY[key] === service(name).command?.[0]);
  return entry ?? assert.fail(`${name}: command ${JSON.stringify(service(name).command)} is no backupmx entry point`);
};

/**
 * A free port below the kernel's ephemeral range, so that no outgoing connection of the five
 * processes can take it between this choice and the service's listen (freePort's ports can).
 */
const givenPorts = new Set<number>();
async function listenPort(): Promise<number> {
  const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || 32768;
  for (;;) {
    const port = 10_000 + Math.floor(Math.random() * (low - 10_000));
    if (givenPorts.has(port)) continue;
    givenPorts.add(port);
    const server = createTcpServer();
    const free = await new Promise<boolean>((resolve) => server.once('error', () => resolve(false)).listen(port, '0.0.0.0', () => resolve(true)));
    if (free) return new Promise((resolve) => server.close(() => resolve(port)));
  }
}

describe('compose variable interpolation (as docker compose does it)', () => {
  it('substitutes plain, braced and defaulted variables, keeps $$ as $, and refuses unset ones', () => {
    const vars = { A: 'x', EMPTY: '' };
    assert.equal(interpolate('$A-${A}:${EMPTY:-d}:${EMPTY-d}:${NOPE-d}:$$A', vars), 'x-x:d::d:$A');
    assert.throws(() => interpolate('${NOPE}', vars), /NOPE is not set/);
    assert.throws(() => interpolate('${EMPTY:?must be set}', vars), /EMPTY: must be set/);
  });
});

describe('docker-compose.yml, .env and the Dockerfile (parsed; npm run test:compose runs them on an engine)', () => {
  it('declares the four backupmx services, RabbitMQ, MongoDB, Jaeger, Prometheus, Grafana, and Mailpit in the demo profile only', () => {
    assert.deepEqual(OURS.sort(), ['deliverer', 'health', 'ingress', 'spool']);
    assert.deepEqual(Object.keys(raw.services).sort(), ['deliverer', 'grafana', 'health', 'ingress', 'jaeger', 'mailpit', 'mongodb', 'prometheus', 'rabbitmq', 'spool']);
    for (const [name, s] of Object.entries(raw.services)) assert.deepEqual(s.profiles, name === 'mailpit' ? ['demo'] : undefined, `${name} profiles`);
  });

  it('pins every image to a version, and keeps the versions in .env', () => {
    for (const [name, s] of Object.entries(raw.services)) {
      assert.match(s.image ?? '', /^\$\{[A-Z_]+_IMAGE\}$/, `${name}: the image comes from .env`);
      const image = service(name).image ?? '';
      const tag = /^[^:@]+:([^:@]+)$/.exec(image)?.[1];
      assert.ok(tag && /\d/.test(tag) && !/latest/.test(tag), `${name}: image ${image} is not pinned to a version`);
    }
    assert.equal(dotenv.RABBITMQ_IMAGE?.endsWith('-management'), true, 'RabbitMQ with its management UI');
  });

  it('gives every service a healthcheck, restart unless-stopped and a memory limit', () => {
    for (const name of Object.keys(raw.services)) {
      const s = service(name);
      assert.ok(s.healthcheck?.test.length, `${name}: healthcheck`);
      assert.equal(s.restart, 'unless-stopped', `${name}: restart`);
      assert.match(s.deploy?.resources?.limits?.memory ?? '', /^\d+[mg]$/, `${name}: memory limit`);
    }
  });

  it('runs each backupmx service from the one image by its command, healthy when /readyz answers 200', () => {
    for (const name of OURS) {
      const s = service(name);
      assert.equal(entryOf(name), name);
      assert.ok(existsSync(join(ROOT, s.command?.[0] ?? '')), `${name}: ${s.command?.[0]} exists`);
      assert.deepEqual(s.build, { context: '.', dockerfile: dotenv.BACKUPMX_DOCKERFILE }, `${name}: built from the Dockerfile .env names`);
      assert.ok(s.healthcheck?.test.join(' ').includes(`127.0.0.1:${s.environment?.HTTP_PORT}/readyz`), `${name}: healthcheck on /readyz of its HTTP_PORT`);
    }
    assert.equal(service('deliverer').deploy?.replicas, 2, 'two deliverers by default');
  });

  it('starts a backupmx service only once the broker (and the store, where it uses one) is healthy', () => {
    for (const name of OURS) {
      const deps = service(name).depends_on ?? {};
      assert.equal(deps.rabbitmq?.condition, 'service_healthy', `${name} waits for RabbitMQ`);
      if (name !== 'health') assert.equal(deps.mongodb?.condition, 'service_healthy', `${name} waits for MongoDB`);
      for (const [dep, { condition }] of Object.entries(deps)) {
        assert.ok(raw.services[dep], `${name} depends on unknown service ${dep}`);
        assert.ok(['service_healthy', 'service_started'].includes(condition), `${name} -> ${dep}: ${condition}`);
      }
    }
  });

  it('sets only environment keys the configuration schema knows (or standard OTEL_*), with values it accepts', () => {
    for (const name of OURS) {
      const environment = service(name).environment ?? {};
      for (const key of Object.keys(environment)) {
        assert.ok(SETTINGS.has(key) || key.startsWith('OTEL_'), `${name}: ${key} is not a setting of the configuration schema`);
      }
      assert.doesNotThrow(() => loadConfig(environment), `${name}: the configuration compose gives it loads`);
      assert.equal(environment.RELAY_DOMAINS, dotenv.RELAY_DOMAINS);
    }
  });

  it('uses MongoDB as a single-node replica set, with the store and the broker on volumes', () => {
    const mongodb = service('mongodb');
    assert.deepEqual(mongodb.command?.slice(0, 3), ['mongod', '--replSet', 'rs0']);
    assert.match(mongodb.healthcheck?.test.join(' ') ?? '', /rs\.initiate\(\{ _id: 'rs0', members: \[\{ _id: 0, host: 'mongodb:27017' \}\] \}\)/);
    for (const name of OURS) {
      if (name !== 'health') assert.equal(service(name).environment?.MONGODB_URL, 'mongodb://mongodb:27017/backupmx?replicaSet=rs0');
      // The credentials travel apart from the URL, taken literally (any password works: issue 13).
      assert.equal(service(name).environment?.AMQP_URL, 'amqp://rabbitmq:5672/');
      assert.equal(raw.services[name]?.environment?.AMQP_USER, '${RABBITMQ_USER}');
      assert.equal(raw.services[name]?.environment?.AMQP_PASSWORD, '${RABBITMQ_PASSWORD}');
    }
    assert.ok(mongodb.volumes?.includes('mongodb-data:/data/db'));
    assert.ok(service('rabbitmq').volumes?.includes('rabbitmq-data:/var/lib/rabbitmq'));
    assert.equal(raw.services['rabbitmq']?.environment?.RABBITMQ_DEFAULT_USER, '${RABBITMQ_USER}', 'the services log in with the account RabbitMQ creates');
    assert.equal(raw.services['rabbitmq']?.environment?.RABBITMQ_DEFAULT_PASS, '${RABBITMQ_PASSWORD}');
    for (const volume of ['rabbitmq-data', 'mongodb-data', 'spool-data']) assert.ok(volume in (raw.volumes ?? {}), `volume ${volume} declared`);
  });

  it('SQLite mode (MONGODB_URL empty): spool, deliverers and ingress share one DATA_DIR volume', () => {
    for (const name of ['ingress', 'spool', 'deliverer']) {
      assert.equal(service(name).environment?.DATA_DIR, '/app/data', `${name}: DATA_DIR given (a spool or deliverer on its own refuses SQLite without it)`);
      assert.ok(service(name).volumes?.includes('spool-data:/app/data'), `${name} mounts spool-data at DATA_DIR`);
    }
    assert.equal(raw.services['spool']?.environment?.MONGODB_URL, '${MONGODB_URL}', 'the store is chosen in .env');
    assert.match(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'), /^VOLUME \/app\/data$/m, 'docker run IMAGE keeps its spool in a volume');
  });

  it('gives RabbitMQ an absolute memory watermark under its container limit', () => {
    const mount = service('rabbitmq').volumes?.find((v) => v.startsWith('./deploy/rabbitmq/'));
    assert.equal(mount, './deploy/rabbitmq/backupmx.conf:/etc/rabbitmq/conf.d/30-backupmx.conf:ro');
    const conf = readFileSync(join(ROOT, 'deploy/rabbitmq/backupmx.conf'), 'utf8');
    const watermark = /^vm_memory_high_watermark\.absolute = (\d+)MiB$/m.exec(conf)?.[1];
    const limit = /^(\d+)g$/.exec(service('rabbitmq').deploy?.resources?.limits?.memory ?? '')?.[1];
    assert.ok(watermark && limit && Number(watermark) < 0.7 * Number(limit) * 1024, `watermark ${watermark} MiB well under the ${limit} GiB limit`);
  });

  it('publishes SMTP on host port 25 to ingress 2525, and the web UIs on the UI address only', () => {
    assert.deepEqual(service('ingress').ports, ['25:2525']);
    assert.equal(service('ingress').environment?.SMTP_PORT, '2525');
    assert.deepEqual(service('rabbitmq').ports, ['127.0.0.1:15672:15672']);
    assert.deepEqual(service('jaeger').ports, ['127.0.0.1:16686:16686']);
    assert.deepEqual(service('mailpit').ports, ['127.0.0.1:8025:8025']);
    assert.deepEqual(service('prometheus').ports, ['127.0.0.1:9090:9090']);
    assert.deepEqual(service('grafana').ports, ['127.0.0.1:3000:3000']);
    for (const name of ['spool', 'health', 'deliverer']) assert.equal(service(name).ports, undefined, `${name} publishes nothing`);
    assert.equal(service('ingress').environment?.OTEL_EXPORTER_OTLP_ENDPOINT, 'http://jaeger:4318', 'traces go to Jaeger over OTLP/HTTP');
    assert.equal(dotenv.PRIMARY, 'mailpit:1025', 'the demo primary');
  });

  it('builds one multi-stage node:24-slim image without dev dependencies, as a non-root user, healthy on /readyz', () => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    const from = [...dockerfile.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
    assert.deepEqual(from, ['node:24-slim', 'node:24-slim']);
    assert.match(dockerfile, /^RUN npm ci --omit=dev\b/m);
    assert.match(dockerfile, /^USER node$/m);
    assert.match(dockerfile, /^HEALTHCHECK .*\\\n\s+CMD .*\/readyz/m);
    assert.match(dockerfile, /^ENTRYPOINT \["node"(, "--[^"]+")*\]$/m, 'node, with only flags before the command (test/start-memory.test.ts checks which)');
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n');
    for (const path of ['node_modules', '**/node_modules', '.env', '.git', 'data']) assert.ok(ignored.includes(path), `.dockerignore leaves out ${path}`);
    // Every file the image's COPY lines name exists.
    for (const [, source] of dockerfile.matchAll(/^COPY (?!--from)(\S+)/gm)) assert.ok(existsSync(join(ROOT, source ?? '')), `COPY ${source}`);
  });
});

describe('the compose stack as local processes (store: SQLite instead of MongoDB, which cannot run here)', () => {
  const vhost = createVhost();
  const dir = tempDir();
  const logs = join(dir.path, 'logs');
  const running: Service[] = [];
  let primary: Awaited<ReturnType<typeof startPrimary>>;
  let otlp: Server;
  let otlpRequests = 0;
  let smtpPort = 0;

  before(async () => {
    primary = await startPrimary();
    otlp = createServer((req, res) => {
      otlpRequests++;
      req.resume().on('end', () => res.writeHead(200, { 'content-type': 'application/x-protobuf' }).end());
    });
    await new Promise<void>((resolve) => otlp.listen(0, '127.0.0.1', resolve));
    // Compose's host names and ports -> this machine.
    const local: Record<string, string> = {
      'mailpit:1025': `127.0.0.1:${primary.port}`,
      'jaeger:4318': `127.0.0.1:${(otlp.address() as AddressInfo).port}`,
    };
    for (const name of OURS) {
      const { MONGODB_URL: _dropped, AMQP_USER: _user, AMQP_PASSWORD: _password, ...composeEnv } = service(name).environment ?? {};
      const replicas = service(name).deploy?.replicas ?? 1;
      for (let i = 1; i <= replicas; i++) {
        const env: Record<string, string> = Object.fromEntries(
          Object.entries(composeEnv).map(([key, value]) => [key, Object.entries(local).reduce((text, [from, to]) => text.replaceAll(from, to), value)]),
        );
        env.AMQP_URL = vhost.url; // the local RabbitMQ, on this test's virtual host, as guest (test:compose runs compose's account)
        env.DATA_DIR = join(dir.path, 'data'); // one SQLite spool shared by every process
        env.HTTP_PORT = String(await listenPort());
        if (name === 'ingress') {
          smtpPort = await listenPort();
          Object.assign(env, { SMTP_HOST: '127.0.0.1', SMTP_PORT: String(smtpPort) });
        }
        running.push(spawnService(`${name}-${i}`, entryOf(name), env, logs));
      }
    }
    await Promise.all(running.map((s) => waitReady(s)));
  });

  after(async () => {
    await Promise.all(running.map((s) => s.stop('SIGKILL')));
    await primary.close();
    await new Promise<void>((resolve) => otlp.close(() => resolve()));
    vhost.remove();
    if (process.env.KEEP_TEST_LOGS) console.log(`logs kept in ${logs}`);
    else dir.remove();
  });

  it('runs as many instances as compose declares, each ready on its own HTTP port', async (t) => {
    t.diagnostic('MONGODB_URL dropped: the store is SQLite in a shared DATA_DIR because no MongoDB server can run here; the MongoDB store is not exercised by this test');
    assert.deepEqual(running.map((s) => s.name).sort(), ['deliverer-1', 'deliverer-2', 'health-1', 'ingress-1', 'spool-1']);
    assert.equal(new Set(running.map((s) => s.httpPort)).size, running.length);
    for (const s of running) {
      const response = await fetch(`http://127.0.0.1:${s.httpPort}/readyz`);
      assert.equal(response.status, 200, `${s.name} /readyz`);
    }
  });

  it('passes mail end to end: every message accepted by ingress reaches the primary once, intact', async (t) => {
    const sent = await sendMessages(smtpPort, 40);
    for (const message of sent) assert.match(message.reply, /^250 2\.0\.0 Ok: queued as /, `message ${message.index}`);
    await waitFor('all 40 messages at the primary', () => new Set(primary.messages.map(queueIdOf)).size >= 40, 30_000);
    assert.equal(assertAllDelivered(sent, primary.messages), 40, 'each message once: two deliverers never sent one delivery twice');
    const byDeliverer = running
      .filter((s) => s.name.startsWith('deliverer'))
      .map((s) => `${s.name}: ${readFileSync(join(logs, `${s.name}.log`), 'utf8').split('\n').filter((line) => line.includes('"msg":"delivered"')).length}`);
    t.diagnostic(`deliveries per deliverer: ${byDeliverer.join(', ')}`);
  });

  it('stops every instance on SIGTERM with exit code 0', async (t) => {
    const codes = await Promise.all(running.map((s) => s.stop('SIGTERM')));
    assert.deepEqual(codes, running.map(() => 0));
    t.diagnostic(`OTLP export requests received at the address compose gives Jaeger: ${otlpRequests} (not asserted here)`);
  });
});
