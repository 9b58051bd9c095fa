import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { makeCa, issue, opensslPins, selfSigned, type Certificate } from './support/certificates.ts';
import { sendAndAttempt, startPeer, startSystem, type Peer, type System } from './support/dsn-peers.ts';
import { parsePin } from '../shared/src/rules/next-hop-tls.ts';
import { tempDir } from './support/util.ts';

/**
 * TLS to the primary (PRIMARY_TLS, PRIMARY_TLS_CA, PRIMARY_TLS_PIN) against real smtp-server
 * primaries on loopback, with certificates made by openssl now: a requirement that is not met
 * defers with a 4.7.x reply before any MAIL command; one that is met delivers over TLS.
 */

let dir: ReturnType<typeof tempDir>;
let ca: Certificate;
let signed: Certificate;
let wrongName: Certificate;
let namedOnly: Certificate;
let self: Certificate;
let otherSelf: Certificate;

before(() => {
  dir = tempDir();
  ca = makeCa(dir.path);
  signed = issue(ca, dir.path, 'primary', ['primary.example.test', '127.0.0.1']);
  wrongName = issue(ca, dir.path, 'elsewhere', ['elsewhere.example.test']);
  namedOnly = issue(ca, dir.path, 'named', ['primary.example.test']);
  self = selfSigned(dir.path, 'self', ['127.0.0.1']);
  otherSelf = selfSigned(dir.path, 'other-self', ['127.0.0.1']);
});
after(() => dir.remove());

async function withPrimary(peer: Peer, env: Record<string, string>, run: (system: System) => Promise<void>) {
  const system = await startSystem({ PRIMARY: `127.0.0.1:${peer.port}`, ...env });
  try {
    await run(system);
  } finally {
    await system.close();
    await peer.close();
  }
}

describe('PRIMARY_TLS=encrypt', () => {
  it('defers with 4.7.4 when the primary does not offer STARTTLS, and sends no MAIL command in clear', async () => {
    const peer = await startPeer();
    await withPrimary(peer, { PRIMARY_TLS: 'encrypt' }, async (system) => {
      const delivery = await sendAndAttempt(system, 'no starttls');
      assert.equal(delivery.state, 'queued', 'kept for a later attempt');
      assert.equal(delivery.lastReply, `4.7.4 TLS is required, but was not offered by host 127.0.0.1:${peer.port}`);
      assert.ok(peer.connections() >= 1, 'the primary was reached');
      assert.equal(peer.mailCommands(), 0, 'no MAIL command');
      assert.equal(peer.messages.length, 0);
    });
  });

  it('delivers over STARTTLS to a primary with a self-signed certificate (encrypted, not authenticated)', async () => {
    const peer = await startPeer({}, { tls: { key: self.keyPem, cert: self.certPem } });
    await withPrimary(peer, { PRIMARY_TLS: 'encrypt' }, async (system) => {
      const delivery = await sendAndAttempt(system, 'encrypted');
      assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
      assert.equal(peer.messages[0]?.secure, true, 'over TLS');
    });
  });
});

describe('PRIMARY_TLS=verify', () => {
  it('defers with 4.7.5 when the certificate is self-signed, before any MAIL command', async () => {
    const peer = await startPeer({}, { tls: { key: self.keyPem, cert: self.certPem } });
    await withPrimary(peer, { PRIMARY_TLS: 'verify' }, async (system) => {
      const delivery = await sendAndAttempt(system, 'self-signed');
      assert.equal(delivery.state, 'queued');
      assert.equal(delivery.lastReply, `4.7.5 Server certificate not trusted: host 127.0.0.1:${peer.port} (DEPTH_ZERO_SELF_SIGNED_CERT)`);
      assert.equal(peer.mailCommands(), 0);
    });
  });

  it('delivers when the certificate chains to PRIMARY_TLS_CA and names the host', async () => {
    const peer = await startPeer({}, { tls: { key: signed.keyPem, cert: signed.certPem } });
    await withPrimary(peer, { PRIMARY_TLS: 'verify', PRIMARY_TLS_CA: ca.cert }, async (system) => {
      const delivery = await sendAndAttempt(system, 'verified');
      assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
      assert.equal(peer.messages[0]?.secure, true);
    });
  });

  it('defers with 4.7.5 when a certificate from PRIMARY_TLS_CA names another host', async () => {
    const peer = await startPeer({}, { tls: { key: wrongName.keyPem, cert: wrongName.certPem } });
    await withPrimary(peer, { PRIMARY_TLS: 'verify', PRIMARY_TLS_CA: ca.cert }, async (system) => {
      const delivery = await sendAndAttempt(system, 'wrong name');
      assert.equal(delivery.state, 'queued');
      assert.equal(delivery.lastReply, `4.7.5 Server certificate not verified: host 127.0.0.1:${peer.port} (Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: )`);
      assert.equal(peer.mailCommands(), 0);
    });
  });

  it('applies a domain\'s own PRIMARY_TLS from the config file, and leaves the other domains as they are', async () => {
    const peer = await startPeer();
    const file = `${dir.path}/per-domain.yaml`;
    writeFileSync(file, `domains:\n  strict.test:\n    PRIMARY_TLS: verify\n`);
    await withPrimary(peer, { RELAY_DOMAINS: 'example.test,strict.test', BACKUPMX_CONFIG: file }, async (system) => {
      const plain = await sendAndAttempt(system, 'plain domain');
      assert.equal(plain.state, 'delivered', 'example.test keeps may');
      const strict = await sendAndAttempt(system, 'strict domain', 'b@strict.test');
      assert.equal(strict.state, 'queued');
      assert.match(strict.lastReply ?? '', /^4\.7\.4 TLS is required, but was not offered/);
      assert.equal(peer.mailCommands(), 1, 'only the plain domain\'s MAIL');
    });
  });
});

describe('PRIMARY_TLS=verify with a primary named by host name', () => {
  // PRIMARY names a host; each attempt looks its address up and connects there (issue 13): the
  // certificate must name the host, whatever address it has.
  const lookup = async (host: string) => (host === 'primary.example.test' ? [{ address: '127.0.0.1', family: 4 }] : []);

  async function attempt(certificate: Certificate) {
    const peer = await startPeer({}, { tls: { key: certificate.keyPem, cert: certificate.certPem } });
    const system = await startSystem({ PRIMARY: `primary.example.test:${peer.port}`, PRIMARY_TLS: 'verify', PRIMARY_TLS_CA: ca.cert }, { deliverer: { lookup } });
    try {
      return { delivery: await sendAndAttempt(system, 'named primary'), peer };
    } finally {
      await system.close();
      await peer.close();
    }
  }

  it('delivers when the certificate names the host (not its address)', async () => {
    const { delivery, peer } = await attempt(namedOnly);
    assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
    assert.equal(delivery.lastNextHop, `primary.example.test[127.0.0.1]:${peer.port}`);
  });

  it('defers with 4.7.5 when it names another host', async () => {
    const { delivery, peer } = await attempt(wrongName);
    assert.equal(delivery.state, 'queued');
    assert.match(delivery.lastReply ?? '', new RegExp(`^4\\.7\\.5 Server certificate not verified: host primary\\.example\\.test\\[127\\.0\\.0\\.1\\]:${peer.port} \\(.*primary\\.example\\.test.*\\)$`));
    assert.equal(peer.mailCommands(), 0);
  });
});

describe('PRIMARY_TLS_PIN', () => {
  it('delivers while the primary presents the pinned key, and defers with 4.7.5 once its certificate changes', async () => {
    const pins = opensslPins(self);
    let peer = await startPeer({}, { tls: { key: self.keyPem, cert: self.certPem } });
    const port = peer.port;
    const system = await startSystem({ PRIMARY: `127.0.0.1:${port}`, PRIMARY_TLS: 'encrypt', PRIMARY_TLS_PIN: pins.spki });
    try {
      const first = await sendAndAttempt(system, 'pinned key');
      assert.equal(first.state, 'delivered', first.lastReply ?? '');
      // The primary restarts with a new certificate and key.
      await peer.close();
      peer = await startPeer({}, { tls: { key: otherSelf.keyPem, cert: otherSelf.certPem }, port });
      const second = await sendAndAttempt(system, 'changed key');
      assert.equal(second.state, 'queued');
      const newPins = opensslPins(otherSelf);
      assert.equal(second.lastReply, `4.7.5 Server certificate not verified: host 127.0.0.1:${port} presents none of the pinned keys (it has ${newPins.spki}, ${parsePin(newPins.cert)})`);
      assert.equal(peer.mailCommands(), 0, 'no MAIL to the changed primary');
    } finally {
      await system.close();
      await peer.close();
    }
  });

  it('takes the certificate fingerprint as openssl prints it (cert-sha256:AB:CD:...)', async () => {
    const peer = await startPeer({}, { tls: { key: self.keyPem, cert: self.certPem } });
    await withPrimary(peer, { PRIMARY_TLS: 'encrypt', PRIMARY_TLS_PIN: `pin-sha256:${'A'.repeat(43)}=, ${opensslPins(self).cert}` }, async (system) => {
      const delivery = await sendAndAttempt(system, 'certificate fingerprint');
      assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
    });
  });
});
