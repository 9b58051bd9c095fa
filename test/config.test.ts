import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, diskHeadroom, formatTarget, loadConfig, memoryBudget, parseTarget } from '../shared/src/runtime/config.ts';
import { parseDuration } from '../shared/src/rules/duration.ts';

/** The least an operator must set. */
const BASE = { RELAY_DOMAINS: 'example.test', PRIMARY: 'mx.example.test' };

/** The ConfigError loadConfig throws for `env`; fails the test when it does not throw one. */
function configError(env: Record<string, string>): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    assert.ok(!/[\r\n]/.test(error.message), `error message spans lines: ${JSON.stringify(error.message)}`);
    return error;
  }
  assert.fail(`loadConfig accepted ${JSON.stringify(env)}`);
}

describe('config: DELIVERY_LEASE', () => {
  it('takes a duration of at least 1s (it is renewed every quarter of it), naming the key otherwise', () => {
    assert.equal(loadConfig({ ...BASE, DELIVERY_LEASE: '1s' }).DELIVERY_LEASE, 1000);
    assert.match(configError({ ...BASE, DELIVERY_LEASE: '500ms' }).message, /^DELIVERY_LEASE: expected at least 1s/);
    assert.match(configError({ ...BASE, DELIVERY_LEASE: 'soon' }).message, /^DELIVERY_LEASE: expected a duration/);
  });
});

describe('config: MEMORY_BUDGET and DISK_HEADROOM', () => {
  it('default to 100 MiB (at least MAX_MESSAGE_SIZE) and twice MAX_MESSAGE_SIZE (at least 16 MiB)', () => {
    assert.equal(memoryBudget(loadConfig(BASE)), 104_857_600);
    assert.equal(memoryBudget(loadConfig({ ...BASE, MAX_MESSAGE_SIZE: '209715200' })), 209_715_200);
    assert.equal(diskHeadroom(loadConfig(BASE)), 52_428_800);
    assert.equal(diskHeadroom(loadConfig({ ...BASE, DISK_HEADROOM: '0' })), 0);
    assert.equal(diskHeadroom(loadConfig({ ...BASE, MAX_MESSAGE_SIZE: '1048576' })), 16 * 1024 * 1024, 'never less than SQLite needs for its journal');
  });

  it('refuse a MEMORY_BUDGET below MAX_MESSAGE_SIZE and values that are not byte counts, naming the key', () => {
    assert.match(configError({ ...BASE, MEMORY_BUDGET: '1048576' }).message, /^MEMORY_BUDGET: must be at least MAX_MESSAGE_SIZE \(26214400\)/);
    assert.match(configError({ ...BASE, MEMORY_BUDGET: 'lots' }).message, /^MEMORY_BUDGET: expected a whole number/);
    assert.match(configError({ ...BASE, DISK_HEADROOM: '-1' }).message, /^DISK_HEADROOM: expected a whole number/);
  });
});

describe('config: required settings', () => {
  it('refuses to start without RELAY_DOMAINS, naming it', () => {
    const error = configError({ PRIMARY: 'mx.example.test' });
    assert.match(error.message, /^RELAY_DOMAINS: /);
    assert.match(error.message, /required/);
  });

  it('refuses to start without PRIMARY, naming it', () => {
    const error = configError({ RELAY_DOMAINS: 'example.test' });
    assert.match(error.message, /^PRIMARY: /);
    assert.match(error.message, /required/);
  });

  it('treats an empty environment variable as unset', () => {
    assert.match(configError({ RELAY_DOMAINS: '', PRIMARY: 'mx.example.test' }).message, /^RELAY_DOMAINS: .*required/);
  });

  it('refuses a RELAY_DOMAINS that lists nothing', () => {
    assert.match(configError({ ...BASE, RELAY_DOMAINS: ' , ,' }).message, /^RELAY_DOMAINS: /);
  });
});

describe('config: defaults', () => {
  it('fills in the documented defaults', () => {
    const config = loadConfig(BASE);
    assert.equal(config.SMTP_PORT, 2525);
    assert.equal(config.HTTP_PORT, 8025);
    assert.equal(config.DATA_DIR, './data');
    assert.equal(config.MAX_MESSAGE_SIZE, 26_214_400);
    assert.equal(config.MAX_RECIPIENTS, 100);
    assert.equal(config.QUEUE_LIFETIME, 5 * 24 * 3600 * 1000);
    assert.deepEqual(config.RETRY_SCHEDULE, [60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000, 3600_000]);
    assert.equal(config.PROBE_INTERVAL, 10_000);
    assert.equal(config.PROBE_INTERVAL_DOWN, 250);
    assert.equal(config.DELIVERY_CONCURRENCY, 20);
    assert.equal(config.DELIVERY_LEASE, 20_000);
    assert.equal(config.PROBE_TIMEOUT, 10_000);
    assert.equal(config.PROBE_FAILURES, 3);
    assert.equal(config.PROBE_SUCCESSES, 2);
    assert.deepEqual(config.domains, {});
    assert.equal(config.AMQP_URL, undefined);
    assert.equal(config.SMARTHOST, undefined);
  });

  it('ignores environment variables that are not settings', () => {
    const config = loadConfig({ ...BASE, PATH: '/usr/bin', HOME: '/root' });
    assert.ok(!('PATH' in config));
  });
});

describe('config: values from the environment', () => {
  it('reads RELAY_DOMAINS as a comma list, lower-cased, trimmed, one trailing dot dropped', () => {
    const config = loadConfig({ ...BASE, RELAY_DOMAINS: ' Example.TEST. ,backup.Example.Org,, ' });
    assert.deepEqual(config.RELAY_DOMAINS, ['example.test', 'backup.example.org']);
  });

  it('reads PRIMARY as a list of host[:port] targets', () => {
    const config = loadConfig({ ...BASE, PRIMARY: 'mx1.example.test:2525, [2001:db8::25], 192.0.2.7' });
    assert.deepEqual(config.PRIMARY, ['mx1.example.test:2525', '[2001:db8::25]', '192.0.2.7']);
  });

  it('converts numbers and durations', () => {
    const config = loadConfig({
      ...BASE,
      SMTP_PORT: '25',
      HTTP_PORT: '8080',
      MAX_MESSAGE_SIZE: '10485760',
      QUEUE_LIFETIME: '3d',
      RETRY_SCHEDULE: '30s, 2m,1h',
      PROBE_INTERVAL: '5s',
      PROBE_TIMEOUT: '500ms',
      PROBE_FAILURES: '4',
      PROBE_SUCCESSES: '1',
      MAX_RECIPIENTS: '1000',
    });
    assert.equal(config.SMTP_PORT, 25);
    assert.equal(config.HTTP_PORT, 8080);
    assert.equal(config.MAX_MESSAGE_SIZE, 10_485_760);
    assert.equal(config.QUEUE_LIFETIME, 3 * 86_400_000);
    assert.deepEqual(config.RETRY_SCHEDULE, [30_000, 120_000, 3_600_000]);
    assert.equal(config.PROBE_INTERVAL, 5000);
    assert.equal(config.PROBE_TIMEOUT, 500);
    assert.equal(config.PROBE_FAILURES, 4);
    assert.equal(config.PROBE_SUCCESSES, 1);
    assert.equal(config.MAX_RECIPIENTS, 1000);
  });

  it('takes amqp:// and amqps:// broker URLs', () => {
    assert.equal(loadConfig({ ...BASE, AMQP_URL: 'amqp://guest:guest@rabbit:5672/' }).AMQP_URL, 'amqp://guest:guest@rabbit:5672/');
    assert.equal(loadConfig({ ...BASE, AMQP_URL: 'amqps://rabbit.example.test/mail' }).AMQP_URL, 'amqps://rabbit.example.test/mail');
  });
});

describe('config: bad values are refused with one line naming the key', () => {
  const cases: Array<[string, string]> = [
    ['SMTP_PORT', 'abc'],
    ['SMTP_PORT', '70000'],
    ['SMTP_PORT', '-1'],
    ['HTTP_PORT', '80.5'],
    ['QUEUE_LIFETIME', 'soon'],
    ['QUEUE_LIFETIME', '0'],
    ['PRIMARY', 'bad host!!'],
    ['PRIMARY', 'mx.example.test:99999'],
    ['SMARTHOST', 'relay example'],
    ['AMQP_URL', 'http://x'],
    ['MONGODB_URL', 'http://db'],
    ['RETRY_SCHEDULE', '1m,,x'],
    ['RELAY_DOMAINS', 'exa mple.test'],
    ['RELAY_DOMAINS', 'example.test,-bad-.test'],
    ['MAX_MESSAGE_SIZE', '10'],
    ['MAX_RECIPIENTS', '0'],
    ['PROBE_FAILURES', 'three'],
    ['LOG_LEVEL', 'loud'],
  ];
  for (const [key, value] of cases) {
    it(`${key}=${JSON.stringify(value)}`, () => {
      const error = configError({ ...BASE, [key]: value });
      assert.ok(error.message.startsWith(`${key}`), `message does not start with ${key}: ${error.message}`);
      assert.match(error.message.slice(key.length), /^(\.\d+)?: /, `message does not name ${key}: ${error.message}`);
    });
  }

  it('says what is wrong with a value that is present, rather than calling it missing', () => {
    for (const [key, value] of [['SMTP_PORT', 'abc'], ['QUEUE_LIFETIME', 'soon'], ['RETRY_SCHEDULE', '1m,,x']] as const) {
      const error = configError({ ...BASE, [key]: value });
      assert.doesNotMatch(error.message, /required/, `${key}=${value}: ${error.message}`);
    }
    assert.match(configError({ ...BASE, SMTP_PORT: 'abc' }).message, /whole number/);
    assert.match(configError({ ...BASE, QUEUE_LIFETIME: 'soon' }).message, /duration/);
  });

  it('quotes the offending value for a bad domain or target', () => {
    assert.match(configError({ ...BASE, RELAY_DOMAINS: 'exa mple.test' }).message, /"exa mple\.test"/);
    assert.match(configError({ ...BASE, PRIMARY: 'bad host!!' }).message, /"bad host!!"/);
  });
});

describe('config: BACKUPMX_CONFIG file', () => {
  let dir = '';
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'backupmx-config-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const YAML = [
    'RELAY_DOMAINS: [Example.TEST, backup.example.org.]',
    'PRIMARY: mx.example.test:2525',
    'SMTP_PORT: 2600',
    'QUEUE_LIFETIME: 2d',
    'RETRY_SCHEDULE: [30s, 2m]',
    'PROBE_FAILURES: 5',
    'domains:',
    '  Backup.Example.Org.:',
    '    PRIMARY: [mx1.backup.example.org, "[2001:db8::1]:26"]',
    '',
  ].join('\n');

  it('reads the same keys from YAML, with a per-domain PRIMARY', () => {
    const config = loadConfig({ BACKUPMX_CONFIG: file('backupmx.yaml', YAML) });
    assert.deepEqual(config.RELAY_DOMAINS, ['example.test', 'backup.example.org']);
    assert.deepEqual(config.PRIMARY, ['mx.example.test:2525']);
    assert.equal(config.SMTP_PORT, 2600);
    assert.equal(config.QUEUE_LIFETIME, 2 * 86_400_000);
    assert.deepEqual(config.RETRY_SCHEDULE, [30_000, 120_000]);
    assert.equal(config.PROBE_FAILURES, 5);
    assert.deepEqual(config.domains, { 'backup.example.org': { PRIMARY: ['mx1.backup.example.org', '[2001:db8::1]:26'] } });
    assert.equal(config.HTTP_PORT, 8025, 'keys the file leaves out still get their defaults');
  });

  it('lets the environment win over the file', () => {
    const config = loadConfig({
      BACKUPMX_CONFIG: file('override.yaml', YAML),
      SMTP_PORT: '2700',
      PRIMARY: 'other-mx.example.test',
      RETRY_SCHEDULE: '1h',
    });
    assert.equal(config.SMTP_PORT, 2700);
    assert.deepEqual(config.PRIMARY, ['other-mx.example.test']);
    assert.deepEqual(config.RETRY_SCHEDULE, [3_600_000]);
    assert.equal(config.QUEUE_LIFETIME, 2 * 86_400_000, 'keys not in the environment still come from the file');
  });

  it('satisfies the required keys from the file alone or the environment alone', () => {
    const partial = file('partial.yaml', 'RELAY_DOMAINS: example.test\n');
    assert.deepEqual(loadConfig({ BACKUPMX_CONFIG: partial, PRIMARY: 'mx.example.test' }).RELAY_DOMAINS, ['example.test']);
    assert.match(configError({ BACKUPMX_CONFIG: partial }).message, /^PRIMARY: /);
  });

  it('reads a JSON file', () => {
    const path = file(
      'backupmx.json',
      JSON.stringify({ RELAY_DOMAINS: ['j.example.test'], PRIMARY: ['mx.j.example.test:25'], MAX_RECIPIENTS: 50, domains: { 'j.example.test': { PRIMARY: 'mx2.j.example.test' } } }),
    );
    const config = loadConfig({ BACKUPMX_CONFIG: path });
    assert.deepEqual(config.RELAY_DOMAINS, ['j.example.test']);
    assert.deepEqual(config.PRIMARY, ['mx.j.example.test:25']);
    assert.equal(config.MAX_RECIPIENTS, 50);
    assert.deepEqual(config.domains, { 'j.example.test': { PRIMARY: ['mx2.j.example.test'] } });
  });

  it('reads a bare number as seconds for a duration in the file', () => {
    const config = loadConfig({ BACKUPMX_CONFIG: file('seconds.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\nPROBE_INTERVAL: 30\n') });
    assert.equal(config.PROBE_INTERVAL, 30_000);
  });

  it('refuses an unknown key, naming it', () => {
    const error = configError({ BACKUPMX_CONFIG: file('unknown.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\nSMTP_PROT: 25\n') });
    assert.match(error.message, /SMTP_PROT/);
  });

  it('refuses an unknown key inside a domain section, naming it', () => {
    const error = configError({ BACKUPMX_CONFIG: file('unknown-domain.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\ndomains:\n  a.test:\n    PRIMRAY: mx2.a.test\n') });
    assert.match(error.message, /PRIMRAY/);
  });

  it('refuses a bad value in the file, naming the key', () => {
    const error = configError({ BACKUPMX_CONFIG: file('bad-value.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\nSMTP_PORT: 70000\n') });
    assert.match(error.message, /^SMTP_PORT: /);
  });

  it('refuses a bad domain name in the domains section', () => {
    const error = configError({ BACKUPMX_CONFIG: file('bad-domain.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\ndomains:\n  "bad domain!":\n    PRIMARY: mx.a.test\n') });
    assert.match(error.message, /^domains\b/);
  });

  it('refuses a missing file with a line starting BACKUPMX_CONFIG:', () => {
    const path = join(dir, 'does-not-exist.yaml');
    const error = configError({ ...BASE, BACKUPMX_CONFIG: path });
    assert.match(error.message, /^BACKUPMX_CONFIG: /);
    assert.ok(error.message.includes(path), `message does not name the file: ${error.message}`);
  });

  it('refuses a file that is not valid YAML with a single line', () => {
    const error = configError({ ...BASE, BACKUPMX_CONFIG: file('broken.yaml', 'RELAY_DOMAINS: [a.test\n  PRIMARY: {\n') });
    assert.match(error.message, /^BACKUPMX_CONFIG: /);
  });

  it('refuses a file holding a list instead of a mapping', () => {
    const error = configError({ ...BASE, BACKUPMX_CONFIG: file('list.yaml', '- RELAY_DOMAINS: a.test\n- PRIMARY: mx.a.test\n') });
    assert.match(error.message, /^BACKUPMX_CONFIG: .*mapping/);
  });

  it('refuses a file holding a bare string', () => {
    assert.match(configError({ ...BASE, BACKUPMX_CONFIG: file('scalar.yaml', 'hello\n') }).message, /^BACKUPMX_CONFIG: /);
  });

  it('keeps the message on one line even when a key in the file holds a line break', () => {
    const error = configError({ BACKUPMX_CONFIG: file('newline-key.yaml', 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\n"SMTP\\nPORT": 25\n') });
    assert.match(error.message, /SMTP\s+PORT/);
  });
});

describe('parseDuration', () => {
  it('reads ms, s, m, h and d units as milliseconds', () => {
    assert.equal(parseDuration('500ms'), 500);
    assert.equal(parseDuration('10s'), 10_000);
    assert.equal(parseDuration('5m'), 300_000);
    assert.equal(parseDuration('1h'), 3_600_000);
    assert.equal(parseDuration('5d'), 432_000_000);
  });

  it('reads a bare number as seconds, as Postfix does', () => {
    assert.equal(parseDuration('30'), 30_000);
    assert.equal(parseDuration('0'), 0);
  });

  it('accepts surrounding whitespace and upper-case units', () => {
    assert.equal(parseDuration(' 2M '), 120_000);
  });

  it('returns null for anything else', () => {
    for (const junk of ['', 'soon', '5x', '-5s', '1m30s', 'm', '5 minutes', '1e3']) assert.equal(parseDuration(junk), null, JSON.stringify(junk));
  });
});

describe('parseTarget and formatTarget', () => {
  it('defaults the port to 25', () => {
    assert.deepEqual(parseTarget('mx.example.test'), { host: 'mx.example.test', port: 25 });
    assert.deepEqual(parseTarget('192.0.2.7'), { host: '192.0.2.7', port: 25 });
  });

  it('reads host:port', () => {
    assert.deepEqual(parseTarget('mx.example.test:2525'), { host: 'mx.example.test', port: 2525 });
    assert.deepEqual(parseTarget(' 127.0.0.1:587 '), { host: '127.0.0.1', port: 587 });
  });

  it('reads a bracketed IPv6 address with and without a port', () => {
    assert.deepEqual(parseTarget('[2001:db8::1]:2525'), { host: '2001:db8::1', port: 2525 });
    assert.deepEqual(parseTarget('[::1]'), { host: '::1', port: 25 });
  });

  it('refuses bad targets', () => {
    for (const bad of ['', 'bad host', 'host!', 'mx.example.test:', 'mx.example.test:0', 'mx.example.test:65536', 'mx.example.test:abc', '2001:db8::1', '[]:25', '[mx.example.test]:25', 'user@mx.example.test']) {
      assert.equal(parseTarget(bad), null, JSON.stringify(bad));
    }
  });

  it('formats targets back to text that parses to the same target', () => {
    assert.equal(formatTarget({ host: 'mx.example.test', port: 25 }), 'mx.example.test:25');
    assert.equal(formatTarget({ host: '2001:db8::1', port: 2525 }), '[2001:db8::1]:2525');
    for (const text of ['mx.example.test:2525', '[2001:db8::1]:26', '192.0.2.1']) {
      const target = parseTarget(text);
      assert.ok(target);
      assert.deepEqual(parseTarget(formatTarget(target)), target);
    }
  });
});
