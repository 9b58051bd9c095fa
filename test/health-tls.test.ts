import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { probeSmtp } from '../services/health/src/probe.ts';
import { parsePin } from '../shared/src/rules/next-hop-tls.ts';
import { makeCa, issue, opensslPins, selfSigned, type Certificate } from './support/certificates.ts';
import { startPeer, type Peer } from './support/dsn-peers.ts';
import { metric } from './support/metrics.ts';
import { spawnService, waitReady, type Service } from './support/processes.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/**
 * The health probe reports each primary's STARTTLS and certificate (real smtp-server primaries,
 * certificates made by openssl now): probeSmtp itself, then `npm start` as an operator reads it in
 * /status, the admin API's primaries and /metrics.
 */

let dir: ReturnType<typeof tempDir>;
let ca: Certificate;
let signed: Certificate;
let self: Certificate;
let plain: Peer;
let verifiedPeer: Peer;
let selfPeer: Peer;

before(async () => {
  dir = tempDir();
  ca = makeCa(dir.path);
  signed = issue(ca, dir.path, 'primary', ['127.0.0.1']);
  self = selfSigned(dir.path, 'self', ['127.0.0.1']);
  plain = await startPeer();
  verifiedPeer = await startPeer({}, { tls: { key: signed.keyPem, cert: signed.certPem } });
  selfPeer = await startPeer({}, { tls: { key: self.keyPem, cert: self.certPem } });
});
after(async () => {
  await Promise.all([plain.close(), verifiedPeer.close(), selfPeer.close()]);
  dir.remove();
});

const OPTIONS = { timeoutMs: 5000, heloName: 'backup.example.test' };

describe('probeSmtp: STARTTLS and the certificate', () => {
  it('says STARTTLS is not offered by a primary without it, and is still up', async () => {
    const result = await probeSmtp({ host: '127.0.0.1', port: plain.port }, OPTIONS);
    assert.ok(result.ok);
    assert.equal(result.tls?.offered, false);
    assert.equal(result.tls?.secured, false);
  });

  it('completes the handshake with a CA-signed primary: trusted with that CA, names the host, pins as openssl computes them', async () => {
    const result = await probeSmtp({ host: '127.0.0.1', port: verifiedPeer.port }, { ...OPTIONS, ca: [ca.certPem] });
    assert.ok(result.ok && result.tls);
    const pins = opensslPins(signed);
    assert.deepEqual(
      { offered: result.tls.offered, secured: result.tls.secured, trusted: result.tls.trusted, nameError: result.tls.nameError, pins: result.tls.pins },
      { offered: true, secured: true, trusted: true, nameError: null, pins: [pins.spki, parsePin(pins.cert)] },
    );
    assert.match(result.tls.protocol ?? '', /^TLSv1\.[23]$/);
    assert.equal(result.tls.subject, 'CN=127.0.0.1');
    assert.ok((result.tls.notAfter ?? 0) > Date.now(), 'expiry read');
  });

  it('does not trust it without the CA (system CAs only)', async () => {
    const result = await probeSmtp({ host: '127.0.0.1', port: verifiedPeer.port }, OPTIONS);
    assert.ok(result.ok && result.tls);
    assert.equal(result.tls.secured, true);
    assert.equal(result.tls.trusted, false);
    assert.equal(result.tls.trustError, 'UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });
});

describe('npm start: TLS of each primary in /status, /api/primaries and /metrics', () => {
  let system: Service;
  let httpPort: number;
  const verifiedTarget = () => `127.0.0.1:${verifiedPeer.port}`;
  const selfTarget = () => `127.0.0.1:${selfPeer.port}`;
  const plainTarget = () => `127.0.0.1:${plain.port}`;

  before(async () => {
    httpPort = await freePort();
    system = spawnService('tls-status', 'all', {
      RELAY_DOMAINS: 'example.test',
      PRIMARY: `${verifiedTarget()},${selfTarget()},${plainTarget()}`,
      PRIMARY_TLS_CA: ca.cert,
      SMTP_HOST: '127.0.0.1',
      SMTP_PORT: String(await freePort()),
      HTTP_PORT: String(httpPort),
      SMTP_HOSTNAME: 'backup.example.test',
      DATA_DIR: join(dir.path, 'data'),
      PROBE_INTERVAL: '500ms',
      PROBE_TIMEOUT: '3s',
    }, join(dir.path, 'logs'));
    await waitReady(system);
  });
  after(async () => {
    await system.stop();
  });

  it('shows per primary whether STARTTLS is offered and the certificate verifies, and why not', async () => {
    type Status = { targets: Record<string, { state: string; tls: { offered: boolean; verified: boolean; pinned: boolean | null; problem: string | null; certificate: { pins: string[] } | null } | null }> };
    // TLS does not decide up or down: every primary answers SMTP, so every one comes up.
    const status = await waitFor('every primary probed and up', async () => {
      const body = (await (await fetch(`http://127.0.0.1:${httpPort}/status`)).json()) as Status;
      return Object.values(body.targets).every((target) => target.tls !== null && target.state === 'up') ? body : null;
    });
    const verified = status.targets[verifiedTarget()]?.tls;
    assert.deepEqual([verified?.offered, verified?.verified, verified?.problem, verified?.pinned], [true, true, null, null]);
    assert.deepEqual(verified?.certificate?.pins, [opensslPins(signed).spki, parsePin(opensslPins(signed).cert)], 'pins to paste into PRIMARY_TLS_PIN');
    const untrusted = status.targets[selfTarget()]?.tls;
    assert.deepEqual([untrusted?.offered, untrusted?.verified], [true, false]);
    assert.equal(untrusted?.problem, `Server certificate not trusted: host ${selfTarget()} (DEPTH_ZERO_SELF_SIGNED_CERT)`);
    const none = status.targets[plainTarget()]?.tls;
    assert.deepEqual([none?.offered, none?.verified, none?.problem], [false, false, `STARTTLS not offered by host ${plainTarget()}`]);
  });

  it('gives the same in the admin API\'s primaries', async () => {
    type Primaries = { targets: Record<string, { tls: { verified: boolean; offered: boolean } | null }> };
    const primaries = await waitFor('the spool to hear of every primary\'s TLS', async () => {
      const body = (await (await fetch(`http://127.0.0.1:${httpPort}/api/primaries`)).json()) as Primaries;
      return Object.keys(body.targets).length === 3 && Object.values(body.targets).every((target) => target.tls) ? body : null;
    });
    assert.equal(primaries.targets[verifiedTarget()]?.tls?.verified, true);
    assert.equal(primaries.targets[selfTarget()]?.tls?.verified, false);
    assert.equal(primaries.targets[plainTarget()]?.tls?.offered, false);
  });

  it('exports backupmx_primary_tls_offered, _verified and the certificate expiry', async () => {
    assert.equal(await metric(httpPort, 'backupmx_primary_tls_verified', { target: verifiedTarget() }), 1);
    assert.equal(await metric(httpPort, 'backupmx_primary_tls_verified', { target: selfTarget() }), 0);
    assert.equal(await metric(httpPort, 'backupmx_primary_tls_offered', { target: plainTarget() }), 0);
    assert.equal(await metric(httpPort, 'backupmx_primary_tls_offered', { target: selfTarget() }), 1);
    const expiry = await metric(httpPort, 'backupmx_primary_tls_cert_expiry_timestamp_seconds', { target: verifiedTarget() });
    assert.ok(expiry !== undefined && expiry * 1000 > Date.now() && expiry * 1000 < Date.now() + 3 * 86_400_000, `expiry ${expiry}`);
  });
});
