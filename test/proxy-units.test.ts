import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { isIP } from 'node:net';
import { describe, it } from 'node:test';
import { normalizeIPv6 } from 'smtp-server/lib/ipv6-normalize.js';
import { formatIP, inRanges, parseCidr, parseIP, parseIPv4, parseIPv6, type Cidr } from '../shared/src/rules/ip.ts';
import { parseProxyHeader, V1_MAX_LENGTH } from '../shared/src/rules/proxy-header.ts';
import { ConfigError, loadConfig } from '../shared/src/runtime/config.ts';
import { sessionId } from '../services/ingress/src/proxy-protocol.ts';
import { tlv, V2_SIGNATURE, v2Header } from './support/haproxy.ts';

const bytes = (text: string | Buffer) => new Uint8Array(Buffer.from(text));
const ok = (input: string | Buffer) => {
  const header = parseProxyHeader(bytes(input));
  assert.equal(header.status, 'ok', `${JSON.stringify(header)} for ${JSON.stringify(String(input))}`);
  return header as Extract<ReturnType<typeof parseProxyHeader>, { status: 'ok' }>;
};
const invalid = (input: string | Buffer, reason: RegExp) => {
  const header = parseProxyHeader(bytes(input));
  assert.equal(header.status, 'invalid', `${JSON.stringify(header)} for ${JSON.stringify(String(input))}`);
  assert.match((header as { reason: string }).reason, reason);
};
/** Every proper prefix of a header is "read more", never a verdict. */
const allPrefixesIncomplete = (header: Buffer) => {
  for (let length = 0; length < header.length; length += 1) {
    assert.deepEqual(parseProxyHeader(new Uint8Array(header.subarray(0, length))), { status: 'incomplete' }, `first ${length} of ${header.length} bytes`);
  }
};

describe('IP addresses (rules/ip.ts)', () => {
  it('reads IPv4 as inet_pton does: four decimal bytes, no leading zeros', () => {
    assert.deepEqual(parseIPv4('127.0.0.2'), [127, 0, 0, 2]);
    assert.deepEqual(parseIPv4('255.255.255.255'), [255, 255, 255, 255]);
    for (const bad of ['256.0.0.1', '1.2.3', '1.2.3.4.5', '01.2.3.4', '1.2.3.-4', ' 1.2.3.4', '1.2.3.4 ', '0x7f.0.0.1', '']) assert.equal(parseIPv4(bad), null, bad);
  });

  it('reads IPv6 text forms, and agrees with node:net on which strings are addresses', () => {
    assert.deepEqual(parseIPv6('::1'), [...Array(15).fill(0), 1]);
    assert.deepEqual(parseIPv6('::ffff:127.0.0.2')?.slice(10), [0xff, 0xff, 127, 0, 0, 2]);
    const samples = ['::', '::1', '1::', '2001:db8::1', '2001:DB8:0:0:0:0:0:1', '1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', '::ffff:1.2.3.4', '64:ff9b::192.0.2.33', '1:2:3:4:5:6:1.2.3.4',
      ':1', '1:', ':::', '1::2::3', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7', '12345::', 'g::1', '::1.2.3', '::256.1.1.1', '1:2:3:4:5:6:7:1.2.3.4', '[::1]', '1.2.3.4'];
    for (const sample of samples) assert.equal(parseIPv6(sample) !== null, isIP(sample) === 6, sample);
    assert.equal(parseIPv6('fe80::1%eth0'), null, 'a zone index has no meaning in a header from elsewhere');
  });

  it('writes IPv6 as RFC 5952 (as smtp-server normalises it), IPv4-mapped addresses as plain IPv4', () => {
    const random = (seed: number) => () => ((seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31);
    const next = random(12);
    for (let round = 0; round < 2000; round += 1) {
      // Mostly zero groups, so that runs of zeros of every length and place occur.
      const groups = Array.from({ length: 8 }, () => (next() < 0.5 ? 0 : Math.floor(next() * 0x10000)));
      const address = groups.map((group) => group.toString(16)).join(':');
      const written = formatIP(parseIPv6(address) ?? []);
      if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
        assert.equal(isIP(written), 4, address);
        continue;
      }
      assert.equal(written, normalizeIPv6(address), address);
    }
    assert.equal(formatIP([0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 1]), '2001:db8::1');
    assert.equal(formatIP(parseIPv6('2001:db8:0:1:1:1:1:1') ?? []), '2001:db8:0:1:1:1:1:1');
    assert.equal(formatIP(parseIPv6('2001:0:0:1:0:0:0:1') ?? []), '2001:0:0:1::1');
    assert.equal(formatIP(parseIPv6('::ffff:192.0.2.7') ?? []), '192.0.2.7');
    assert.equal(formatIP([192, 0, 2, 7]), '192.0.2.7');
  });

  it('reads CIDR ranges and single addresses, and says what is wrong with a bad one', () => {
    assert.deepEqual(parseCidr('10.0.0.0/8'), { bytes: [10, 0, 0, 0], prefix: 8 });
    assert.deepEqual(parseCidr('127.0.0.1'), { bytes: [127, 0, 0, 1], prefix: 32 });
    assert.deepEqual(parseCidr('::ffff:10.0.0.0/104'), { bytes: [10, 0, 0, 0], prefix: 8 });
    assert.equal((parseCidr('2001:db8::/32') as Cidr).prefix, 32);
    assert.equal((parseCidr('::1') as Cidr).prefix, 128);
    assert.deepEqual(parseCidr('10.0.0.1/8'), { error: '"10.0.0.1/8" has bits set past the /8: did you mean 10.0.0.0/8?' });
    assert.deepEqual(parseCidr('10.0.0.0/33'), { error: 'bad prefix length in "10.0.0.0/33" (0 to 32)' });
    assert.deepEqual(parseCidr('2001:db8::/129'), { error: 'bad prefix length in "2001:db8::/129" (0 to 128)' });
    assert.deepEqual(parseCidr('lb.example.com'), { error: 'not an IP address or CIDR range: "lb.example.com"' });
    assert.deepEqual(parseCidr('10.0.0.0/8/8'), { error: 'not an IP address or CIDR range: "10.0.0.0/8/8"' });
  });

  it('matches addresses against ranges, IPv4-mapped IPv6 peers as IPv4', () => {
    const ranges = ['10.1.0.0/16', '127.0.0.1', '2001:db8:1::/48'].map((text) => parseCidr(text) as Cidr);
    for (const inside of ['10.1.2.3', '::ffff:10.1.255.255', '127.0.0.1', '::ffff:127.0.0.1', '2001:db8:1:ffff::9']) assert.ok(inRanges(inside, ranges), inside);
    for (const outside of ['10.2.0.1', '127.0.0.2', '::1', '2001:db8:2::1', 'junk', '']) assert.ok(!inRanges(outside, ranges), outside);
    assert.ok(inRanges('203.0.113.9', [parseCidr('0.0.0.0/0') as Cidr]));
    assert.ok(!inRanges('2001:db8::1', [parseCidr('0.0.0.0/0') as Cidr]), 'an IPv4 range never holds an IPv6 address');
    assert.ok(parseIP('::ffff:1.2.3.4'));
  });
});

describe('PROXY protocol v1 header (rules/proxy-header.ts)', () => {
  it('reads TCP4 and TCP6 headers as HAProxy sends them, and says how long they were', () => {
    const line = 'PROXY TCP4 127.0.0.2 127.0.0.1 51234 2525\r\n';
    assert.deepEqual(parseProxyHeader(bytes(`${line}EHLO x\r\n`)), {
      status: 'ok', length: line.length, version: 1, command: 'proxy',
      source: { address: '127.0.0.2', port: 51234 }, destination: { address: '127.0.0.1', port: 2525 },
    });
    const six = ok('PROXY TCP6 2001:DB8:0:0::7 2001:db8::25 65535 0\r\n');
    assert.deepEqual([six.source, six.destination], [{ address: '2001:db8::7', port: 65535 }, { address: '2001:db8::25', port: 0 }]);
    assert.equal(ok('PROXY TCP6 ::ffff:127.0.0.3 ::ffff:127.0.0.1 1 2\r\n').source?.address, '127.0.0.3', 'IPv4-mapped source shown as IPv4');
  });

  it('takes UNKNOWN (with or without addresses) as the balancer\'s own connection', () => {
    assert.deepEqual(parseProxyHeader(bytes('PROXY UNKNOWN\r\n')), { status: 'ok', length: 15, version: 1, command: 'unknown', source: null, destination: null });
    assert.equal(ok('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n').command, 'unknown');
  });

  it('waits for the rest of a header that has not all arrived', () => {
    allPrefixesIncomplete(Buffer.from('PROXY TCP6 2001:db8::7 2001:db8::25 40000 25\r\n'));
  });

  it('refuses garbled, truncated and overlong lines', () => {
    invalid('PROXY TCP4 127.0.0.2 127.0.0.1 51234\r\n', /exactly/);
    invalid('PROXY TCP4 127.0.0.2 127.0.0.1 51234 2525 extra\r\n', /exactly/);
    invalid('PROXY TCP4  127.0.0.2 127.0.0.1 51234 2525\r\n', /exactly|address/);
    invalid('PROXY TCP4 127.0.0.2 127.0.0.1 51234 2525\n', /CRLF/);
    invalid('PROXY TCP4 ::1 127.0.0.1 1 2\r\n', /bad TCP4 address/);
    invalid('PROXY TCP6 127.0.0.2 ::1 1 2\r\n', /bad TCP6 address/);
    invalid('PROXY TCP4 <script> 127.0.0.1 1 2\r\n', /bad TCP4 address/);
    invalid('PROXY TCP4 127.0.0.2 127.0.0.1 65536 2525\r\n', /bad port/);
    invalid('PROXY TCP4 127.0.0.2 127.0.0.1 0080 2525\r\n', /bad port/);
    invalid('PROXY TCP5 127.0.0.2 127.0.0.1 1 2\r\n', /unknown protocol "TCP5"/);
    invalid('PROXY TCP4 127.0.0.2\t127.0.0.1 1 2\r\n', /control/);
    invalid(`PROXY UNKNOWN ${'x'.repeat(V1_MAX_LENGTH)}`, /longer than 107/);
    invalid(`PROXY UNKNOWN ${'x'.repeat(100)}\r\n`, /longer than 107/);
    invalid('proxy TCP4 127.0.0.2 127.0.0.1 1 2\r\n', /not a PROXY/);
  });

  it('refuses what is not a header at all: SMTP, TLS, HTTP, noise', () => {
    for (const text of ['EHLO client.example\r\n', 'PROXZ', '\x16\x03\x01\x02\x00', 'GET / HTTP/1.0\r\n', '\r\nEHLO x\r\n', '\0']) invalid(text, /not a PROXY protocol header/);
  });
});

describe('PROXY protocol v2 header (rules/proxy-header.ts)', () => {
  it('reads a TCP over IPv4 header and leaves what follows it', () => {
    const header = v2Header({ source: '127.0.0.2', destination: '127.0.0.1', sourcePort: 51234, destinationPort: 2525 });
    assert.equal(header.length, 28);
    assert.deepEqual(parseProxyHeader(bytes(Buffer.concat([header, Buffer.from('EHLO x\r\n')]))), {
      status: 'ok', length: 28, version: 2, command: 'proxy',
      source: { address: '127.0.0.2', port: 51234 }, destination: { address: '127.0.0.1', port: 2525 },
    });
  });

  it('reads a TCP over IPv6 header (and an IPv4-mapped source as IPv4)', () => {
    const header = ok(v2Header({ source: '2001:db8:0:7::1', destination: '2001:db8::25', sourcePort: 1, destinationPort: 65535 }));
    assert.deepEqual([header.length, header.source, header.destination], [52, { address: '2001:db8:0:7::1', port: 1 }, { address: '2001:db8::25', port: 65535 }]);
    assert.equal(ok(v2Header({ source: '::ffff:127.0.0.3', destination: '::1' })).source?.address, '127.0.0.3');
  });

  it('skips TLVs (ALPN, authority, CRC32C, unique id, AWS VPC endpoint) without reading them as SMTP', () => {
    const tlvs = Buffer.concat([tlv(0x01, 'smtp'), tlv(0x02, 'mx.example.com'), tlv(0x03, Buffer.alloc(4)), tlv(0x05, 'abc123'), tlv(0xea, '\x01vpce-0123')]);
    const header = v2Header({ source: '203.0.113.9', tlvs });
    const parsed = ok(Buffer.concat([header, Buffer.from('EHLO x\r\n')]));
    assert.equal(parsed.length, header.length);
    assert.equal(parsed.source?.address, '203.0.113.9');
  });

  it('takes LOCAL (health checks) as the balancer\'s own connection, whatever its address block holds', () => {
    assert.deepEqual(parseProxyHeader(bytes(Buffer.concat([V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]))), { status: 'ok', length: 16, version: 2, command: 'local', source: null, destination: null });
    const local = ok(v2Header({ command: 'local', source: '192.0.2.1' }));
    assert.deepEqual([local.command, local.source, local.length], ['local', null, 28]);
  });

  it('falls back to the connection\'s own addresses for UNSPEC, UNIX and UDP (as the specification asks)', () => {
    assert.equal(ok(Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x00, 0x00, 0x00])])).command, 'unknown');
    assert.equal(ok(Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x31, 0x00, 216]), Buffer.alloc(216)])).command, 'unknown');
    assert.equal(ok(v2Header({ source: '192.0.2.1', familyByte: 0x12 })).command, 'unknown');
  });

  it('waits for the rest of a header, TLVs included, that has not all arrived', () => {
    allPrefixesIncomplete(v2Header({ source: '2001:db8::7', tlvs: tlv(0x05, 'unique') }));
  });

  it('refuses broken headers: version, command, family, an address block too short for its family', () => {
    const header = v2Header({ source: '192.0.2.1' });
    const change = (index: number, value: number) => {
      const copy = Buffer.from(header);
      copy[index] = value;
      return copy;
    };
    invalid(change(12, 0x11), /version 1/);
    invalid(change(12, 0x22), /unknown command 2/);
    invalid(change(13, 0x41), /unknown address family or protocol 0x41/);
    invalid(change(13, 0x13), /unknown address family or protocol 0x13/);
    invalid(v2Header({ source: '192.0.2.1', length: 8 }).subarray(0, 24), /8 bytes, too short for a INET address block/);
    invalid(v2Header({ source: '2001:db8::1', length: 12 }).subarray(0, 28), /too short for a INET6/);
    invalid(change(11, 0x0b), /not a PROXY protocol header/);
  });
});

describe('PROXY_FROM and PROXY_TIMEOUT settings', () => {
  const base = { RELAY_DOMAINS: 'example.test', PRIMARY: 'mail.example.test' };
  it('defaults: no balancer trusted, 5 s for a header, dual-stack listener', () => {
    const config = loadConfig(base);
    assert.deepEqual(config.PROXY_FROM, []);
    assert.equal(config.PROXY_TIMEOUT, 5000);
    assert.equal(config.SMTP_HOST, '::');
  });

  it('takes addresses and ranges of both families', () => {
    const config = loadConfig({ ...base, PROXY_FROM: '127.0.0.1, 10.0.0.0/8,2001:db8::/32', PROXY_TIMEOUT: '2s' });
    assert.deepEqual(config.PROXY_FROM.map((range) => range.prefix), [32, 8, 32]);
    assert.equal(config.PROXY_TIMEOUT, 2000);
  });

  it('names the key and the entry of a bad value in one line', () => {
    assert.throws(() => loadConfig({ ...base, PROXY_FROM: '127.0.0.1,haproxy' }), (error: Error) => error instanceof ConfigError && error.message === 'PROXY_FROM.1: not an IP address or CIDR range: "haproxy"');
    assert.throws(() => loadConfig({ ...base, PROXY_FROM: '192.168.1.1/24' }), (error: Error) => error.message === 'PROXY_FROM.0: "192.168.1.1/24" has bits set past the /24: did you mean 192.168.1.0/24?');
    assert.throws(() => loadConfig({ ...base, PROXY_TIMEOUT: 'soon' }), (error: Error) => error.message === 'PROXY_TIMEOUT: expected a duration such as 30s, 5m, 1h or 5d');
  });
});

describe('smtp-server session ids (proxy-protocol.ts)', () => {
  it('are 16 base-32 digits (80 random bits, the library\'s own format) and do not repeat', () => {
    const ids = Array.from({ length: 5000 }, () => sessionId());
    for (const id of ids.slice(0, 50)) assert.match(id, /^[0-9a-v]{16}$/);
    assert.equal(new Set(ids).size, ids.length);
  });
});
