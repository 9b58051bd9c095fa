import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../shared/src/runtime/config.ts';
import { tempDir } from './support/util.ts';

/** The settings of inbound protection (ingress): defaults and one-line errors naming the key. */
const BASE = { RELAY_DOMAINS: 'example.test', PRIMARY: 'mx.example.test' };
const dir = tempDir();
const file = (name: string, text: string) => {
  const path = join(dir.path, name);
  writeFileSync(path, text);
  return path;
};
function configError(env: Record<string, string>): string {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    assert.ok(!/[\r\n]/.test(error.message));
    return error.message;
  }
  assert.fail('accepted');
}

describe('config: inbound protection', () => {
  after(() => dir.remove());

  it('has the documented defaults', () => {
    const config = loadConfig(BASE);
    assert.equal(config.MAX_CONNECTIONS, 500);
    assert.equal(config.MAX_CONNECTIONS_PER_IP, 50);
    assert.equal(config.MESSAGES_PER_IP_PER_MINUTE, 0);
    assert.equal(config.RECIPIENTS_PER_IP_PER_MINUTE, 0);
    assert.equal(config.MAX_ERRORS, 20);
    assert.equal(config.COMMAND_TIMEOUT, 300_000);
    assert.equal(config.DATA_TIMEOUT, 300_000);
    assert.equal(config.MAX_COMMAND_LENGTH, 2048);
    assert.equal(config.MAX_HEADER_SIZE, 102_400);
    assert.equal(config.ACCEPT_WHEN_PRIMARY_UP, true);
    assert.equal(config.TLS_CERT, undefined);
    assert.equal(config.SENDER_AUTH, true);
    assert.equal(config.DMARC_REJECT, false);
    assert.equal(config.DNS_TIMEOUT, 2000);
    assert.deepEqual(config.DNSBL_ZONES, []);
    assert.equal(config.VERIFY_TIMEOUT, 4000);
    assert.equal(config.VERIFY_POSITIVE_TTL, 30 * 86_400_000);
    assert.equal(config.VERIFY_NEGATIVE_TTL, 3_600_000);
  });

  it('reads the settings from the environment', () => {
    const config = loadConfig({ ...BASE, ACCEPT_WHEN_PRIMARY_UP: 'false', DNSBL_ZONES: 'Zen.Example, bl.test.', DMARC_REJECT: 'yes', COMMAND_TIMEOUT: '10m', MAX_COMMAND_LENGTH: '512' });
    assert.equal(config.ACCEPT_WHEN_PRIMARY_UP, false);
    assert.deepEqual(config.DNSBL_ZONES, ['zen.example', 'bl.test']);
    assert.equal(config.DMARC_REJECT, true);
    assert.equal(config.COMMAND_TIMEOUT, 600_000);
    assert.equal(config.MAX_COMMAND_LENGTH, 512);
  });

  it('refuses a command line limit below RFC 5321\'s 512', () => {
    assert.match(configError({ ...BASE, MAX_COMMAND_LENGTH: '100' }), /^MAX_COMMAND_LENGTH: /);
  });

  it('needs TLS_CERT and TLS_KEY together, and readable', () => {
    const cert = file('cert.pem', '-----BEGIN CERTIFICATE-----\n');
    assert.equal(configError({ ...BASE, TLS_CERT: cert }), 'TLS_KEY: required when TLS_CERT is set');
    assert.equal(configError({ ...BASE, TLS_KEY: cert }), 'TLS_CERT: required when TLS_KEY is set');
    assert.equal(configError({ ...BASE, TLS_CERT: cert, TLS_KEY: join(dir.path, 'missing.key') }), `TLS_KEY: cannot read file "${join(dir.path, 'missing.key')}"`);
  });

  it('reads per-domain recipient settings from the config file', () => {
    const list = file('list.txt', 'a@example.test\n');
    const config = loadConfig({
      ...BASE,
      RELAY_DOMAINS: 'example.test,example.org',
      BACKUPMX_CONFIG: file('ok.yaml', `domains:\n  example.test:\n    RECIPIENTS: [A@Example.Test, '@example.test']\n    RECIPIENTS_FILE: ${list}\n  example.org:\n    VERIFY_RECIPIENTS: true\n    VERIFY_WHEN_DOWN: defer\n`),
    });
    assert.deepEqual(config.domains['example.test'], { RECIPIENTS: ['a@example.test', '@example.test'], RECIPIENTS_FILE: list });
    assert.deepEqual(config.domains['example.org'], { VERIFY_RECIPIENTS: true, VERIFY_WHEN_DOWN: 'defer' });
  });

  it('names the key of a bad per-domain setting', () => {
    const bad = (name: string, yaml: string) => configError({ ...BASE, BACKUPMX_CONFIG: file(name, `domains:\n  example.test:\n${yaml}`) });
    assert.equal(bad('both.yaml', '    VERIFY_RECIPIENTS: true\n    RECIPIENTS: [a@example.test]\n'), 'domains.example.test.VERIFY_RECIPIENTS: cannot be combined with RECIPIENTS or RECIPIENTS_FILE');
    assert.equal(bad('policy.yaml', '    VERIFY_RECIPIENTS: true\n    VERIFY_WHEN_DOWN: maybe\n'), 'domains.example.test.VERIFY_WHEN_DOWN: expected accept or defer');
    assert.equal(bad('lonely.yaml', '    VERIFY_WHEN_DOWN: defer\n'), 'domains.example.test.VERIFY_WHEN_DOWN: only applies with VERIFY_RECIPIENTS: true');
    assert.match(bad('entry.yaml', '    RECIPIENTS: [not-an-address]\n'), /^domains\.example\.test\.RECIPIENTS\.0: expected user@domain or @domain/);
    assert.match(bad('file.yaml', `    RECIPIENTS_FILE: ${join(dir.path, 'nope.txt')}\n`), /^domains\.example\.test\.RECIPIENTS_FILE: cannot read file /);
    assert.equal(
      configError({ ...BASE, PRIMARY: 'mx', BACKUPMX_CONFIG: file('mx.yaml', 'domains:\n  example.test:\n    VERIFY_RECIPIENTS: true\n') }),
      'domains.example.test.VERIFY_RECIPIENTS: needs a PRIMARY that names hosts (callouts to DNS MX hosts are not supported)',
    );
  });
});
