import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ConfigError, loadConfig } from '../shared/src/runtime/config.ts';
import { makeCa, type Certificate } from './support/certificates.ts';
import { tempDir } from './support/util.ts';

/** TLS to the next hop in the configuration: PRIMARY_TLS, PRIMARY_TLS_CA, PRIMARY_TLS_PIN, MTA_STS. */

const BASE = { RELAY_DOMAINS: 'example.test', PRIMARY: 'mx.example.test' };
const SPKI = `pin-sha256:${'Q'.repeat(43)}=`;

let dir: ReturnType<typeof tempDir>;
let ca: Certificate;
before(() => {
  dir = tempDir();
  ca = makeCa(dir.path);
});
after(() => dir.remove());

/** loadConfig refuses `env` with exactly this one line. */
function refuses(env: Record<string, string>, line: string | RegExp): void {
  assert.throws(() => loadConfig(env), (error) => error instanceof ConfigError && (typeof line === 'string' ? error.message === line : line.test(error.message)) && !/[\r\n]/.test(error.message));
}

describe('config: TLS to the next hop', () => {
  it('defaults to may (opportunistic STARTTLS), no CA, no pins, MTA-STS on', () => {
    const config = loadConfig(BASE);
    assert.deepEqual([config.PRIMARY_TLS, config.PRIMARY_TLS_CA, config.PRIMARY_TLS_PIN, config.MTA_STS], ['may', undefined, [], true]);
  });

  it('takes the levels in any case, a CA file, pins as a comma list', () => {
    const config = loadConfig({ ...BASE, PRIMARY_TLS: ' Verify ', PRIMARY_TLS_CA: ca.cert, PRIMARY_TLS_PIN: `${SPKI}, cert-sha256:${'AB:'.repeat(31)}AB`, MTA_STS: 'false' });
    assert.deepEqual([config.PRIMARY_TLS, config.PRIMARY_TLS_CA, config.PRIMARY_TLS_PIN.length, config.MTA_STS], ['verify', ca.cert, 2, false]);
  });

  it('refuses a bad level, a CA file that is missing or holds no certificate, a malformed pin', () => {
    refuses({ ...BASE, PRIMARY_TLS: 'dane' }, 'PRIMARY_TLS: expected may, encrypt or verify');
    refuses({ ...BASE, PRIMARY_TLS_CA: join(dir.path, 'missing.pem') }, `PRIMARY_TLS_CA: cannot read file ${JSON.stringify(join(dir.path, 'missing.pem'))}`);
    const notPem = join(dir.path, 'not.pem');
    writeFileSync(notPem, 'hello\n');
    refuses({ ...BASE, PRIMARY_TLS_CA: notPem }, `PRIMARY_TLS_CA: ${notPem} holds no PEM certificate`);
    const broken = join(dir.path, 'broken.pem');
    writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
    refuses({ ...BASE, PRIMARY_TLS_CA: broken }, new RegExp(`^PRIMARY_TLS_CA: certificate 1 in ${broken} does not parse`));
    refuses({ ...BASE, PRIMARY_TLS: 'encrypt', PRIMARY_TLS_PIN: 'sha256/abc' }, /^PRIMARY_TLS_PIN\.0: expected pin-sha256:<base64 SHA-256 of the public key> or cert-sha256:<hex SHA-256 of the certificate>, got "sha256\/abc"$/);
  });

  it('refuses pins under may, which would go on without TLS', () => {
    refuses({ ...BASE, PRIMARY_TLS_PIN: SPKI }, 'PRIMARY_TLS_PIN: needs PRIMARY_TLS encrypt or verify (may goes on without TLS)');
  });

  it('takes per-domain settings in the config file, and names the domain\'s key when one is wrong', () => {
    const file = join(dir.path, 'domains.yaml');
    writeFileSync(file, `RELAY_DOMAINS: a.test, b.test\nPRIMARY: mx.a.test\ndomains:\n  a.test:\n    PRIMARY_TLS: verify\n    PRIMARY_TLS_CA: ${ca.cert}\n  b.test:\n    PRIMARY_TLS: encrypt\n    PRIMARY_TLS_PIN: [${SPKI}]\n`);
    const config = loadConfig({ BACKUPMX_CONFIG: file });
    assert.deepEqual(config.domains['a.test'], { PRIMARY_TLS: 'verify', PRIMARY_TLS_CA: ca.cert });
    assert.deepEqual(config.domains['b.test'], { PRIMARY_TLS: 'encrypt', PRIMARY_TLS_PIN: [SPKI] });
    const bad = join(dir.path, 'bad-domain.yaml');
    writeFileSync(bad, `RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\nPRIMARY_TLS: encrypt\nPRIMARY_TLS_PIN: ${SPKI}\ndomains:\n  a.test:\n    PRIMARY_TLS: may\n`);
    refuses({ BACKUPMX_CONFIG: bad }, 'domains.a.test.PRIMARY_TLS: PRIMARY_TLS_PIN needs PRIMARY_TLS encrypt or verify (may goes on without TLS)');
    writeFileSync(bad, 'RELAY_DOMAINS: a.test\nPRIMARY: mx.a.test\ndomains:\n  a.test:\n    PRIMARY_TLS: sometimes\n');
    refuses({ BACKUPMX_CONFIG: bad }, 'domains.a.test.PRIMARY_TLS: expected may, encrypt or verify');
  });
});
