import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { makeCa, issue, opensslPins, selfSigned, type Certificate } from './support/certificates.ts';
import { sendAndAttempt, startPeer, startSystem, type Peer, type System } from './support/dsn-peers.ts';
import { parsePin } from '../shared/src/rules/next-hop-tls.ts';
import { sendRaw } from './support/reports.ts';
import { tempDir, waitFor } from './support/util.ts';

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

describe('PRIMARY_TLS=may with STARTTLS refused', () => {
  /**
   * A primary that offers STARTTLS and DSN but answers STARTTLS `454 4.7.0` (as Postfix does when its
   * TLS engine fails): plain SMTP, line by line, recording every command it gets.
   */
  async function refusingPrimary() {
    const commands: string[] = [];
    const server = createServer((socket) => {
      let buffer = '';
      let inData = false;
      socket.write('220 primary.example.test ESMTP\r\n');
      socket.on('data', (chunk) => {
        buffer += chunk.toString('latin1');
        for (let end = buffer.indexOf('\r\n'); end >= 0; end = buffer.indexOf('\r\n')) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (inData) {
            if (line === '.') {
              inData = false;
              socket.write('250 2.0.0 Ok: queued\r\n');
            }
            continue;
          }
          commands.push(line);
          const verb = line.slice(0, 4).toUpperCase();
          if (verb === 'EHLO') socket.write('250-primary.example.test\r\n250-STARTTLS\r\n250-DSN\r\n250 8BITMIME\r\n');
          else if (verb === 'STAR') socket.write('454 4.7.0 TLS not available due to local problem\r\n');
          else if (verb === 'DATA') {
            inData = true;
            socket.write('354 End data with <CR><LF>.<CR><LF>\r\n');
          } else if (verb === 'QUIT') socket.end('221 2.0.0 Bye\r\n');
          else socket.write('250 2.1.0 Ok\r\n');
        }
      });
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return { port, commands, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
  }

  it('goes on in plain text, passes the DSN parameters on and sends no "relayed" report: the EHLO reply offered DSN', async () => {
    const primary = await refusingPrimary();
    const system = await startSystem({ PRIMARY: `127.0.0.1:${primary.port}` });
    try {
      const { final, id } = await sendRaw(system.port, {
        from: 'sender@origin.test',
        params: 'RET=HDRS ENVID=env-1',
        rcpts: [{ address: 'a@example.test', params: 'NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a@example.test' }],
        message: 'From: <sender@origin.test>\r\nSubject: may\r\n\r\nHello.\r\n',
      });
      assert.match(final, /^250 /);
      await waitFor('the delivery', () => primary.commands.some((line) => line === 'DATA'));
      assert.ok(primary.commands.includes('STARTTLS'), 'STARTTLS was tried');
      const mail = primary.commands.find((line) => line.startsWith('MAIL FROM:')) ?? '';
      const rcpt = primary.commands.find((line) => line.startsWith('RCPT TO:')) ?? '';
      assert.match(mail, /\bRET=HDRS\b/, mail);
      assert.match(mail, /\bENVID=env-1\b/, mail);
      assert.match(rcpt, /\bNOTIFY=SUCCESS,FAILURE\b/, rcpt);
      assert.match(rcpt, /\bORCPT=rfc822;a@example\.test\b/i, rcpt);
      const delivery = await waitFor('the delivery recorded', async () => {
        const found = (await system.store.getMessage(id ?? ''))?.deliveries[0];
        return found?.state === 'delivered' ? found : null;
      });
      assert.match(delivery.lastReply ?? '', /^250 /);
      // The primary offered DSN, so it reports on what it accepted (RFC 3461 5.2); a report from us
      // would be a second "relayed" notice for NOTIFY=SUCCESS.
      assert.equal((await system.store.list({ sender: '<>' })).total, 0, 'no report queued');
    } finally {
      await system.close();
      await primary.close();
    }
  });
});
