import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addressLiteral, receivedHeader, rfc5322Date } from '../services/ingress/src/received-header.ts';
import { checkRecipient } from '../shared/src/rules/relay-policy.ts';
import { addressForm } from '../services/ingress/src/smtp-server-patches.ts';

/** As loadConfig gives them: lower case, no trailing dot. */
const RELAY_DOMAINS: ReadonlySet<string> = new Set(['example.test', 'backup.example.org']);

function assertRelayDenied(address: string) {
  const reply = checkRecipient(address, RELAY_DOMAINS);
  assert.ok(reply, `${address} was accepted for relay`);
  assert.equal(reply.code, 550, address);
  assert.equal(reply.status, '5.7.1', address);
  assert.match(reply.text, /Relay access denied/, address);
}

describe('relay policy', () => {
  it('accepts a recipient in a relay domain', () => {
    assert.equal(checkRecipient('user@example.test', RELAY_DOMAINS), null);
    assert.equal(checkRecipient('first.last+tag@backup.example.org', RELAY_DOMAINS), null);
  });

  it('matches the domain case-insensitively', () => {
    assert.equal(checkRecipient('User@EXAMPLE.Test', RELAY_DOMAINS), null);
    assert.equal(checkRecipient('user@Backup.Example.ORG', RELAY_DOMAINS), null);
  });

  it('ignores one trailing dot on the domain, but not two', () => {
    assert.equal(checkRecipient('user@example.test.', RELAY_DOMAINS), null);
    assertRelayDenied('user@example.test..');
  });

  it('refuses other domains, subdomains and parent domains of a relay domain', () => {
    for (const address of ['user@elsewhere.test', 'user@sub.example.test', 'user@mail.backup.example.org', 'user@test', 'user@example.org', 'user@example.testx', 'user@xexample.test']) {
      assertRelayDenied(address);
    }
  });

  it('refuses the percent hack', () => {
    assertRelayDenied('victim%elsewhere.test@example.test');
  });

  it('refuses bang paths', () => {
    assertRelayDenied('elsewhere.test!victim@example.test');
  });

  it('refuses a quoted local part hiding another @', () => {
    assertRelayDenied('"victim@elsewhere.test"@example.test');
    assertRelayDenied('victim@elsewhere.test@example.test');
  });

  it('refuses source routes', () => {
    assertRelayDenied('@relay.test:victim@example.test');
    assertRelayDenied('@a.test,@b.test:victim@example.test');
  });

  it('refuses address literals, even ones naming us', () => {
    assertRelayDenied('user@[192.0.2.1]');
    assertRelayDenied('user@[IPv6:2001:db8::1]');
  });

  it('refuses an address without a domain', () => {
    assertRelayDenied('postmaster');
    assertRelayDenied('user@');
    assertRelayDenied('@example.test');
  });

  it('names the refused recipient in the reply text', () => {
    assert.match(checkRecipient('user@elsewhere.test', RELAY_DOMAINS)?.text ?? '', /<user@elsewhere\.test>/);
  });
});

describe('Received header', () => {
  const date = new Date(Date.UTC(2026, 10, 28, 9, 22, 52));
  const fields = {
    helo: 'client.origin.test',
    clientAddress: '192.0.2.1',
    by: 'backup.example.test',
    protocol: 'ESMTP',
    id: '1K8GO1OKOHIT2E6OR',
    recipients: ['user@example.test'],
    date,
  };

  it('names the single recipient with for <...>', () => {
    assert.equal(
      receivedHeader(fields),
      'Received: from client.origin.test ([192.0.2.1])\r\n' +
        '\tby backup.example.test (backupmx) with ESMTP id 1K8GO1OKOHIT2E6OR\r\n' +
        '\tfor <user@example.test>; Sat, 28 Nov 2026 09:22:52 +0000\r\n',
    );
  });

  it('leaves out for when there are several recipients, the by line ending with ;', () => {
    assert.equal(
      receivedHeader({ ...fields, protocol: 'ESMTPS', recipients: ['a@example.test', 'b@example.test'] }),
      'Received: from client.origin.test ([192.0.2.1])\r\n' +
        '\tby backup.example.test (backupmx) with ESMTPS id 1K8GO1OKOHIT2E6OR;\r\n' +
        '\tSat, 28 Nov 2026 09:22:52 +0000\r\n',
    );
  });

  it('does not reveal other recipients', () => {
    const header = receivedHeader({ ...fields, recipients: ['a@example.test', 'bcc@example.test'] });
    assert.ok(!header.includes('bcc@example.test'));
  });

  it('shows an IPv6 client as an IPv6 address literal', () => {
    assert.match(receivedHeader({ ...fields, clientAddress: '2001:db8::25' }), /^Received: from client\.origin\.test \(\[IPv6:2001:db8::25\]\)\r\n/);
  });

  it('shows an IPv4-mapped IPv6 client as plain IPv4', () => {
    assert.match(receivedHeader({ ...fields, clientAddress: '::ffff:198.51.100.9' }), /^Received: from client\.origin\.test \(\[198\.51\.100\.9\]\)\r\n/);
  });

  it('cleans spaces and control characters out of the HELO name', () => {
    const header = receivedHeader({ ...fields, helo: 'evil host\r\nX-Injected: yes\x00\x7f' });
    assert.ok(!header.includes('\0') && !header.includes('\x7f'));
    assert.equal(header.split('\r\n').length, 4, 'the header grew extra lines');
    assert.match(header, /^Received: from \S+ \(\[192\.0\.2\.1\]\)\r\n/);
    assert.ok(!/^X-Injected/m.test(header));
  });

  it('says unknown when nothing is left of the HELO name', () => {
    assert.match(receivedHeader({ ...fields, helo: ' \t ' }), /^Received: from unknown \(/);
  });

  it('keeps HELO comment and address characters from breaking the header structure', () => {
    // An unbalanced "(" would turn the rest of the field into a comment, hiding by, with, id and for.
    const header = receivedHeader({ ...fields, helo: 'x(<a@b>)"\\;' });
    const from = /^Received: from (\S+) \(\[192\.0\.2\.1\]\)\r\n/.exec(header)?.[1];
    assert.ok(from !== undefined, header);
    assert.doesNotMatch(from, /[()<>"\\;@]/);
  });

  it('dates with a numeric zone', () => {
    assert.equal(rfc5322Date(new Date(Date.UTC(2026, 10, 1, 9, 2, 3))), 'Sun, 01 Nov 2026 09:02:03 +0000');
    assert.match(rfc5322Date(new Date()), /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$/);
  });

  it('ends every line with CRLF and starts continuation lines with a tab', () => {
    for (const recipients of [['a@example.test'], ['a@example.test', 'b@example.test']]) {
      const header = receivedHeader({ ...fields, recipients });
      assert.ok(header.endsWith('\r\n'));
      assert.ok(!/[^\r]\n/.test(header), 'bare LF');
      assert.ok(!/\r[^\n]/.test(header), 'bare CR');
      const lines = header.slice(0, -2).split('\r\n');
      assert.equal(lines.length, 3);
      assert.ok(lines[0]?.startsWith('Received: '));
      for (const line of lines.slice(1)) assert.ok(line.startsWith('\t'), JSON.stringify(line));
      assert.equal(header.split(';').length, 2, 'exactly one ; before the date');
    }
  });

  it('formats address literals', () => {
    assert.equal(addressLiteral('192.0.2.1'), '[192.0.2.1]');
    assert.equal(addressLiteral('::1'), '[IPv6:::1]');
    assert.equal(addressLiteral('::FFFF:192.0.2.1'), '[192.0.2.1]');
    assert.equal(addressLiteral('::ffff:c000:201'), '[IPv6:::ffff:c000:201]');
  });
});

describe('address forms before smtp-server parses them (Postfix-compatible)', () => {
  it('drops one trailing dot from the domain, keeps parameters, leaves other lines alone', () => {
    assert.deepEqual(addressForm('RCPT', 'RCPT TO:<u@example.test.> NOTIFY=NEVER'), { line: 'RCPT TO:<u@example.test> NOTIFY=NEVER' });
    assert.deepEqual(addressForm('MAIL', 'MAIL FROM:<a@origin.test.>'), { line: 'MAIL FROM:<a@origin.test>' });
    assert.equal(addressForm('RCPT', 'RCPT TO:<u@example.test..>'), null);
    assert.equal(addressForm('RCPT', 'RCPT TO:<u@example.test>'), null);
    assert.equal(addressForm('MAIL', 'MAIL FROM:<>'), null);
  });
  it('refuses a quoted local part that holds an @ at RCPT, also behind a source route', () => {
    const refusal = addressForm('RCPT', 'RCPT TO:<"u@elsewhere.test"@example.test>');
    assert.ok(refusal && 'refusal' in refusal);
    assert.deepEqual([refusal.refusal.code, refusal.refusal.status], [550, '5.7.1']);
    assert.ok(addressForm('RCPT', 'RCPT TO:<@relay.test:"u@x.test"@example.test>'));
    assert.equal(addressForm('RCPT', 'RCPT TO:<"john doe"@example.test>'), null);
  });
});
