import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parse } from 'yaml';
import { formatIP } from '../shared/src/rules/ip.ts';
import { loadConfig } from '../shared/src/runtime/config.ts';
import { registry } from '../shared/src/runtime/metrics.ts';
import { interpolate } from './support/compose.ts';
import { haproxyVersion, startHaproxy } from './support/haproxy.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { sendMessages } from './support/mail.ts';
import { sample } from './support/metrics.ts';
import { ROOT } from './support/processes.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * docker-compose.haproxy.yml and deploy/haproxy/haproxy.cfg: the override parsed and checked
 * against the base file's settings, and the HAProxy configuration itself run by a real HAProxy
 * in front of ingress, with only what Docker supplies (its DNS for `ingress`, port 2525 in a
 * container) replaced by loopback. On a Docker engine, test/compose-haproxy.sh runs the whole
 * stack with `--scale ingress=3`.
 */
interface Override {
  services: Record<string, { image?: string; ports?: unknown; networks?: string[]; environment?: Record<string, string>; volumes?: string[] }>;
  networks: Record<string, { ipam: { config: { subnet: string }[] } }>;
}
const RESET = Symbol('!reset');
const override = parse(readFileSync(join(ROOT, 'docker-compose.haproxy.yml'), 'utf8'), {
  customTags: [{ tag: '!reset', collection: 'seq', resolve: () => RESET } as never],
}) as Override;
const haproxyConfig = readFileSync(join(ROOT, 'deploy/haproxy/haproxy.cfg'), 'utf8');
const defaults = { SMTP_PUBLIC_PORT: '25' };

describe('docker-compose.haproxy.yml', () => {
  it('gives host port 25 to HAProxy, takes ingress\'s own mapping away, and runs HAProxy on the smtp-lb network only', () => {
    const { haproxy, ingress } = override.services;
    assert.deepEqual(haproxy?.ports?.toString(), '${SMTP_PUBLIC_PORT}:2525');
    assert.equal(ingress?.ports, RESET, 'ingress publishes no port (compose v2.24+: !reset)');
    assert.deepEqual(haproxy?.networks, ['smtp-lb']);
    assert.deepEqual(ingress?.networks?.sort(), ['default', 'smtp-lb'], 'ingress still reaches RabbitMQ on the default network');
    assert.ok(haproxy?.volumes?.includes('./deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro'));
    assert.match(interpolate(haproxy?.image ?? '', {}), /^haproxy:\d+\.\d+/, 'the image is pinned');
  });

  it('trusts PROXY headers from the smtp-lb subnet and nothing else, as ingress reads PROXY_FROM', () => {
    const subnet = interpolate(override.networks['smtp-lb']?.ipam.config[0]?.subnet ?? '', defaults);
    const proxyFrom = interpolate(override.services.ingress?.environment?.PROXY_FROM ?? '', defaults);
    assert.equal(proxyFrom, subnet);
    const config = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: 'mailpit:1025', PROXY_FROM: proxyFrom });
    assert.equal(config.PROXY_FROM.length, 1);
    assert.equal(`${formatIP(config.PROXY_FROM[0]?.bytes ?? [])}/${config.PROXY_FROM[0]?.prefix}`, subnet);
    const mine = interpolate(override.networks['smtp-lb']?.ipam.config[0]?.subnet ?? '', { SMTP_LB_SUBNET: '10.99.0.0/28' });
    assert.equal(mine, '10.99.0.0/28', 'SMTP_LB_SUBNET moves both');
    assert.equal(interpolate(override.services.ingress?.environment?.PROXY_FROM ?? '', { SMTP_LB_SUBNET: '10.99.0.0/28' }), mine);
  });
});

describe('deploy/haproxy/haproxy.cfg', () => {
  it('is valid for HAProxy, sends PROXY v2 to ingress:2525 and waits longer than ingress\'s own timeouts', () => {
    assert.ok(haproxyVersion(), 'haproxy is not installed (Debian: apt-get install haproxy)');
    const check = spawnSync('haproxy', ['-c', '-f', join(ROOT, 'deploy/haproxy/haproxy.cfg')], { encoding: 'utf8' });
    assert.equal(check.status, 0, `${check.stdout}${check.stderr}`);
    assert.match(haproxyConfig, /^\s*default-server [^\n]*\bsend-proxy-v2\b/m);
    assert.match(haproxyConfig, /^\s*server-template ingress \S+ ingress:2525\s*$/m);
    assert.match(haproxyConfig, /^\s*bind :2525\s*$/m);
    const defaultsConfig = loadConfig({ RELAY_DOMAINS: 'example.test', PRIMARY: 'mailpit:1025' });
    for (const side of ['client', 'server']) {
      const minutes = Number(new RegExp(`^\\s*timeout ${side} (\\d+)m\\s*$`, 'm').exec(haproxyConfig)?.[1]);
      assert.ok(minutes * 60_000 > Math.max(defaultsConfig.COMMAND_TIMEOUT, defaultsConfig.DATA_TIMEOUT), `timeout ${side} ${minutes}m`);
    }
  });
});

describe('deploy/haproxy/haproxy.cfg run by HAProxy in front of ingress (Docker DNS and port replaced by loopback)', () => {
  const dir = tempDir();
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  let haproxy: Awaited<ReturnType<typeof startHaproxy>>;
  let port = 0;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', SENDER_AUTH: 'false', PROXY_FROM: '127.0.0.1' });
    port = await freePort();
    const local = haproxyConfig
      .replace(/^resolvers docker\n(?:[ \t]+.*\n)+/m, '')
      .replace(/ resolvers docker init-addr none/, '')
      .replace(/^[ \t]*bind :2525[ \t]*$/m, `  bind 127.0.0.1:${port}`)
      .replace(/^[ \t]*server-template ingress \S+ ingress:2525[ \t]*$/m, `  server ingress1 127.0.0.1:${system.port}`);
    assert.doesNotMatch(local, /resolvers|ingress:2525|:2525\n/, 'what Docker supplies is replaced');
    haproxy = await startHaproxy(local, dir.path, [port]);
  });
  after(async () => {
    await haproxy?.stop();
    await system?.close();
    dir.remove();
  });

  it('passes its SMTP health check over PROXY v2 LOCAL, and hands ingress the client\'s address', async () => {
    const local = async () => sample(await registry.metrics(), 'backupmx_proxy_headers_total', { version: '2', command: 'local' }) ?? 0;
    await waitFor('a LOCAL health check', async () => (await local()) >= 1, 20_000, 100);
    const sent = await sendMessages(port, 5, { localAddress: '127.0.0.2', concurrency: 2 });
    for (const message of sent) {
      assert.ok(message.id, message.reply);
      const chunks: Buffer[] = [];
      for await (const chunk of await system.store.readBody(message.id)) chunks.push(chunk as Buffer);
      assert.match(Buffer.concat(chunks).toString('latin1'), /^Received: from \S+ \(\[127\.0\.0\.2\]\)/);
    }
    const log = readFileSync(join(dir.path, 'haproxy.log'), 'utf8');
    assert.doesNotMatch(log, /is DOWN/, `the health check never failed:\n${log}`);
  });
});
