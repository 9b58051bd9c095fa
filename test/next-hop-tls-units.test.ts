import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { domainRequirement, NOT_OFFERED, OPPORTUNISTIC, parsePin, recipientsRequirement, strictest, tlsRefusal, tlsStatus, type TlsFacts, type TlsRequirement } from '../shared/src/rules/next-hop-tls.ts';

const SPKI = `pin-sha256:${'Q'.repeat(43)}=`;
const CERT = `cert-sha256:${'ab'.repeat(32)}`;

/** A handshake that went well: trusted chain, right name, these pins. */
const good: TlsFacts = { ...NOT_OFFERED, offered: true, secured: true, protocol: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', trusted: true, pins: [SPKI, CERT], subject: 'CN=mx', issuer: 'CN=ca', notAfter: 1 };
const need = (level: TlsRequirement['level'], pins: string[] = []): TlsRequirement => ({ level, trust: ['system'], pins });
const HOST = 'mx.example.test[192.0.2.1]:25';

describe('parsePin', () => {
  it('takes a public-key pin in base64 and a certificate fingerprint in hex, with or without colons', () => {
    assert.equal(parsePin(` ${SPKI} `), SPKI);
    assert.equal(parsePin(`PIN-SHA256:${'Q'.repeat(43)}=`), SPKI, 'prefix in any case');
    assert.equal(parsePin(`cert-sha256:${'AB:'.repeat(31)}AB`), CERT, 'as openssl -fingerprint prints it');
    assert.equal(parsePin(CERT.toUpperCase().replace('CERT-SHA256', 'cert-sha256')), CERT);
  });

  it('refuses anything else', () => {
    for (const text of ['', 'sha256:abc', `pin-sha256:${'Q'.repeat(42)}=`, `pin-sha256:${'Q'.repeat(44)}`, `cert-sha256:${'ab'.repeat(31)}`, `cert-sha256:${'zz'.repeat(32)}`, `cert-sha1:${'ab'.repeat(20)}`]) {
      assert.equal(parsePin(text), null, text);
    }
  });
});

describe('tlsRefusal', () => {
  it('never refuses under may (today\'s behaviour), whatever TLS there is', () => {
    assert.equal(tlsRefusal(need('may'), NOT_OFFERED, HOST), null);
    assert.equal(tlsRefusal(need('may'), { ...good, trusted: false }, HOST), null);
  });

  it('encrypt: 4.7.4 without STARTTLS or when it is refused, 4.7.5 when the handshake fails; an untrusted certificate is fine', () => {
    assert.equal(tlsRefusal(need('encrypt'), NOT_OFFERED, HOST), `4.7.4 TLS is required, but was not offered by host ${HOST}`);
    assert.equal(tlsRefusal(need('encrypt'), { ...NOT_OFFERED, offered: true, refused: '454 4.7.0 TLS not available' }, HOST), `4.7.4 TLS is required, but host ${HOST} refused to start TLS: 454 4.7.0 TLS not available`);
    assert.equal(tlsRefusal(need('encrypt'), { ...NOT_OFFERED, offered: true, error: 'wrong version number' }, HOST), `4.7.5 Cannot start TLS with host ${HOST}: handshake failure (wrong version number)`);
    assert.equal(tlsRefusal(need('encrypt'), { ...good, trusted: false, trustError: 'DEPTH_ZERO_SELF_SIGNED_CERT', nameError: 'no match' }, HOST), null);
  });

  it('verify: also a trusted chain and the host\'s name', () => {
    assert.equal(tlsRefusal(need('verify'), good, HOST), null);
    assert.equal(tlsRefusal(need('verify'), { ...good, trusted: false, trustError: 'CERT_HAS_EXPIRED' }, HOST), `4.7.5 Server certificate not trusted: host ${HOST} (CERT_HAS_EXPIRED)`);
    assert.equal(tlsRefusal(need('verify'), { ...good, nameError: 'Host: mx.example.test. is not in the cert\'s altnames: DNS:other.test' }, HOST), `4.7.5 Server certificate not verified: host ${HOST} (Host: mx.example.test. is not in the cert's altnames: DNS:other.test)`);
    assert.match(tlsRefusal(need('verify'), NOT_OFFERED, HOST) ?? '', /^4\.7\.4 /);
  });

  it('pins: one of the leaf\'s pins must be listed; with encrypt a self-signed pinned certificate passes', () => {
    const selfSigned = { ...good, trusted: false, trustError: 'DEPTH_ZERO_SELF_SIGNED_CERT' };
    assert.equal(tlsRefusal(need('encrypt', [SPKI]), selfSigned, HOST), null);
    assert.equal(tlsRefusal(need('encrypt', ['pin-sha256:other=', CERT]), selfSigned, HOST), null, 'any listed pin');
    assert.equal(tlsRefusal(need('encrypt', ['pin-sha256:other=']), selfSigned, HOST), `4.7.5 Server certificate not verified: host ${HOST} presents none of the pinned keys (it has ${SPKI}, ${CERT})`);
    assert.match(tlsRefusal(need('verify', [SPKI]), selfSigned, HOST) ?? '', /not trusted/, 'verify checks the chain too');
    assert.match(tlsRefusal({ ...need('may'), pins: [SPKI] }, NOT_OFFERED, HOST) ?? '', /^4\.7\.4 /, 'pins alone require TLS');
  });
});

describe('requirements from the configuration', () => {
  const config = {
    RELAY_DOMAINS: ['example.test', 'strict.test', 'pinned.test'],
    PRIMARY_TLS: 'may' as const,
    PRIMARY_TLS_CA: '/etc/backupmx/ca.pem',
    PRIMARY_TLS_PIN: [],
    domains: {
      'strict.test': { PRIMARY_TLS: 'verify' as const },
      'pinned.test': { PRIMARY_TLS: 'encrypt' as const, PRIMARY_TLS_PIN: [`cert-sha256:${'AB:'.repeat(31)}AB`], PRIMARY_TLS_CA: '/etc/backupmx/pinned-ca.pem' },
    },
  };

  it('a domain inherits the global settings, its own win, and a domain we do not back up gets opportunistic TLS', () => {
    assert.deepEqual(domainRequirement(config, 'example.test'), { level: 'may', trust: ['/etc/backupmx/ca.pem'], pins: [] });
    assert.deepEqual(domainRequirement(config, 'strict.test'), { level: 'verify', trust: ['/etc/backupmx/ca.pem'], pins: [] });
    assert.deepEqual(domainRequirement(config, 'pinned.test'), { level: 'encrypt', trust: ['/etc/backupmx/pinned-ca.pem'], pins: [CERT] });
    assert.deepEqual(domainRequirement(config, 'origin.test'), OPPORTUNISTIC);
  });

  it('recipients of several domains in one transaction get all their requirements', () => {
    assert.deepEqual(recipientsRequirement(config, ['a@Example.test', 'b@strict.test', 'c@pinned.test']), { level: 'verify', trust: ['/etc/backupmx/ca.pem'], pins: [CERT] });
    assert.deepEqual(recipientsRequirement(config, ['a@example.test', 'b@example.test']), { level: 'may', trust: ['/etc/backupmx/ca.pem'], pins: [] });
  });

  it('strictest: the highest level, the trust anchors of what verifies, every pin', () => {
    assert.deepEqual(strictest([need('may'), { level: 'verify', trust: ['/ca'], pins: [] }, need('encrypt', [SPKI])]), { level: 'verify', trust: ['/ca'], pins: [SPKI] });
    assert.deepEqual(strictest([]), OPPORTUNISTIC);
  });
});

describe('tlsStatus (what the probe reports)', () => {
  it('verified and unpinned, with the pins to copy', () => {
    assert.deepEqual(tlsStatus(good, need('may'), '192.0.2.1:25'), {
      offered: true,
      verified: true,
      pinned: null,
      protocol: 'TLSv1.3',
      problem: null,
      certificate: { subject: 'CN=mx', issuer: 'CN=ca', notAfter: 1, pins: [SPKI, CERT] },
    });
  });

  it('says what is wrong: not offered, not trusted, pin not matching', () => {
    assert.equal(tlsStatus(NOT_OFFERED, need('may'), 'h:25').problem, 'STARTTLS not offered by host h:25');
    assert.equal(tlsStatus({ ...good, trusted: false, trustError: 'CERT_HAS_EXPIRED' }, need('may'), 'h:25').problem, 'Server certificate not trusted: host h:25 (CERT_HAS_EXPIRED)');
    const pinned = tlsStatus(good, need('encrypt', ['pin-sha256:other=']), 'h:25');
    assert.equal(pinned.pinned, false);
    assert.match(pinned.problem ?? '', /presents none of the pinned keys/);
  });
});
