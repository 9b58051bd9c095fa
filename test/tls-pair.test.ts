import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { watchTlsFiles, type TlsFiles } from '../services/ingress/src/tls-files.ts';
import { selfSigned, type Certificate } from './support/certificates.ts';
import { captureLog } from './support/log-capture.ts';
import { ENTRY, ROOT } from './support/processes.ts';
import { tempDir, waitFor } from './support/util.ts';

/**
 * TLS_CERT and TLS_KEY must be a PEM certificate and the key that belongs to it, on Node and Deno
 * alike (Deno's tls.createSecureContext takes a mismatched pair, and text that is not PEM, silently).
 */

const GOOD = { RELAY_DOMAINS: 'example.test', PRIMARY: '127.0.0.1:2526', SMTP_HOST: '127.0.0.1', SMTP_PORT: '0', HTTP_PORT: '0' };

function start(env: Record<string, string>) {
  const result = spawnSync(process.execPath, [join(ROOT, ENTRY.all)], { cwd: ROOT, env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8', timeout: 120_000 });
  return { code: result.status, stderr: result.stderr };
}

describe('TLS_CERT and TLS_KEY', () => {
  let dir: ReturnType<typeof tempDir>;
  let first: Certificate;
  let second: Certificate;
  let notPem: string;
  before(() => {
    dir = tempDir();
    first = selfSigned(dir.path, 'first', ['first.example.test']);
    second = selfSigned(dir.path, 'second', ['second.example.test']);
    notPem = join(dir.path, 'not-pem.txt');
    writeFileSync(notPem, 'this is not a certificate\n');
  });
  after(() => dir.remove());

  describe('at start-up (npm start): one line naming the key, exit 78', () => {
    it('refuses a certificate with the key of another', () => {
      const { code, stderr } = start({ ...GOOD, DATA_DIR: dir.path, TLS_CERT: first.cert, TLS_KEY: second.key });
      assert.equal(stderr, `backupmx all: configuration: TLS_KEY: ${second.key} does not belong to the certificate in TLS_CERT\n`);
      assert.equal(code, 78);
    });

    it('refuses a TLS_CERT that is not PEM', () => {
      const { code, stderr } = start({ ...GOOD, DATA_DIR: dir.path, TLS_CERT: notPem, TLS_KEY: first.key });
      assert.equal(stderr, `backupmx all: configuration: TLS_CERT: ${notPem} holds no PEM certificate\n`);
      assert.equal(code, 78);
    });

    it('refuses a TLS_KEY that is not PEM', () => {
      const { code, stderr } = start({ ...GOOD, DATA_DIR: dir.path, TLS_CERT: first.cert, TLS_KEY: notPem });
      assert.equal(stderr, `backupmx all: configuration: TLS_KEY: ${notPem} holds no PEM private key\n`);
      assert.equal(code, 78);
    });

    it('refuses a certificate whose PEM body does not parse', () => {
      const broken = join(dir.path, 'broken.crt');
      writeFileSync(broken, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
      const { code, stderr } = start({ ...GOOD, DATA_DIR: dir.path, TLS_CERT: broken, TLS_KEY: first.key });
      assert.match(stderr, new RegExp(`^backupmx all: configuration: TLS_CERT: ${broken} the certificate does not parse \\(.*\\)\\n$`));
      assert.equal(code, 78);
    });
  });

  describe('on reload: ignored with a warning, the current pair stays', () => {
    let live: { cert: string; key: string };
    let applied: TlsFiles[];
    let capture: ReturnType<typeof captureLog>;
    let watcher: { stop(): void };
    before(() => {
      live = { cert: join(dir.path, 'live.crt'), key: join(dir.path, 'live.key') };
      copyFileSync(first.cert, live.cert);
      copyFileSync(first.key, live.key);
      applied = [];
      capture = captureLog();
      watcher = watchTlsFiles(live.cert, live.key, capture.log, (files) => applied.push(files), 20);
    });
    after(() => watcher.stop());

    const warnings = () => capture.entries('TLS certificate not reloaded; keeping the current one');

    it('does not apply a certificate that does not match the key, and says so', async () => {
      writeFileSync(live.cert, readFileSync(second.cert));
      const [warning] = await waitFor('the warning', () => (warnings().length ? warnings() : null));
      assert.equal(warning?.level, 40);
      assert.match(String((warning?.err as { message?: string } | undefined)?.message), new RegExp(`^TLS_KEY: ${live.key} does not belong to the certificate in TLS_CERT$`));
      assert.equal(applied.length, 0);
    });

    it('does not apply a certificate file that is not PEM, and says so', async () => {
      const before = warnings().length;
      writeFileSync(live.cert, 'garbage, not PEM\n');
      await waitFor('a second warning', () => warnings().length > before);
      assert.match(String((warnings().at(-1)?.err as { message?: string } | undefined)?.message), /^TLS_CERT: .* holds no PEM certificate$/);
      assert.equal(applied.length, 0);
    });

    it('applies the pair once the key that belongs to it is there too', async () => {
      writeFileSync(live.cert, readFileSync(second.cert));
      writeFileSync(live.key, readFileSync(second.key));
      const files = await waitFor('the new pair to be applied', () => applied.at(-1));
      assert.equal(files.cert.toString(), readFileSync(second.cert, 'utf8'));
      assert.equal(files.key.toString(), readFileSync(second.key, 'utf8'));
    });
  });
});
