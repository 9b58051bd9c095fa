/**
 * The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2) that a trusted load
 * balancer sends before anything else on a connection, naming the client it accepted the
 * connection from. Pure: bytes in, a verdict out; the caller reads the socket (ingress
 * proxy-protocol.ts).
 */
import { formatIP, parseIPv4, parseIPv6 } from './ip.ts';

export interface ProxyEndpoint {
  address: string;
  port: number;
}

export type ProxyHeader =
  /** Every byte so far fits a header, which is not complete yet: read more. */
  | { status: 'incomplete' }
  /** Not a header, or a broken one: `reason` says what is wrong, for the log. */
  | { status: 'invalid'; reason: string }
  | {
      status: 'ok';
      /** Bytes the header took; what follows is the client's SMTP. */
      length: number;
      version: 1 | 2;
      /**
       * proxy: `source` is the client. local (v2 LOCAL, a balancer's health check) and unknown (v1
       * UNKNOWN, v2 with an address family we do not take, such as UNIX or UDP): the connection is
       * the balancer's own, `source` is null.
       */
      command: 'proxy' | 'local' | 'unknown';
      source: ProxyEndpoint | null;
      destination: ProxyEndpoint | null;
    };

/** `PROXY TCP6 <39> <39> 65535 65535\r\n`: the longest v1 line, CRLF included. */
export const V1_MAX_LENGTH = 107;
const V1_PREFIX = [0x50, 0x52, 0x4f, 0x58, 0x59, 0x20]; // "PROXY "
const V2_SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];
const V2_FIXED = 16;

/** What a connection from a trusted balancer begins with, judged on the bytes received so far. */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeader {
  if (bytes.length === 0) return { status: 'incomplete' };
  if (startsLike(bytes, V2_SIGNATURE)) return bytes.length < V2_SIGNATURE.length ? { status: 'incomplete' } : parseV2(bytes);
  if (startsLike(bytes, V1_PREFIX)) return bytes.length < V1_PREFIX.length ? { status: 'incomplete' } : parseV1(bytes);
  return { status: 'invalid', reason: 'not a PROXY protocol header' };
}

/** The bytes so far agree with `prefix` (as far as either goes). */
function startsLike(bytes: Uint8Array, prefix: number[]): boolean {
  const length = Math.min(bytes.length, prefix.length);
  for (let index = 0; index < length; index += 1) if (bytes[index] !== prefix[index]) return false;
  return true;
}

const PORT = /^(?:0|[1-9]\d{0,4})$/;

function parseV1(bytes: Uint8Array): ProxyHeader {
  const lf = bytes.indexOf(0x0a);
  if (lf === -1) return bytes.length >= V1_MAX_LENGTH ? { status: 'invalid', reason: `v1 header longer than ${V1_MAX_LENGTH} bytes` } : { status: 'incomplete' };
  if (lf + 1 > V1_MAX_LENGTH) return { status: 'invalid', reason: `v1 header longer than ${V1_MAX_LENGTH} bytes` };
  if (bytes[lf - 1] !== 0x0d) return { status: 'invalid', reason: 'v1 header does not end with CRLF' };
  const line = bytes.subarray(0, lf - 1);
  if (line.some((byte) => byte < 0x20 || byte > 0x7e)) return { status: 'invalid', reason: 'v1 header holds control or non-ASCII bytes' };
  const fields = String.fromCharCode(...line).split(' ');
  const length = lf + 1;
  // "PROXY UNKNOWN" may carry anything after it; the receiver ignores it.
  if (fields[1] === 'UNKNOWN') return { status: 'ok', length, version: 1, command: 'unknown', source: null, destination: null };
  if (fields[1] !== 'TCP4' && fields[1] !== 'TCP6') return { status: 'invalid', reason: `v1 header with unknown protocol ${JSON.stringify(fields[1] ?? '')}` };
  if (fields.length !== 6) return { status: 'invalid', reason: 'v1 header without exactly: protocol, source, destination, source port, destination port' };
  const parse = fields[1] === 'TCP4' ? parseIPv4 : parseIPv6;
  const [, , sourceText = '', destinationText = '', sourcePort = '', destinationPort = ''] = fields;
  const source = parse(sourceText);
  const destination = parse(destinationText);
  if (!source || !destination) return { status: 'invalid', reason: `v1 header with a bad ${fields[1]} address` };
  if (!PORT.test(sourcePort) || !PORT.test(destinationPort) || Number(sourcePort) > 65535 || Number(destinationPort) > 65535) {
    return { status: 'invalid', reason: 'v1 header with a bad port' };
  }
  return {
    status: 'ok',
    length,
    version: 1,
    command: 'proxy',
    source: { address: formatIP(source), port: Number(sourcePort) },
    destination: { address: formatIP(destination), port: Number(destinationPort) },
  };
}

/** Address family (high nibble of byte 13) and the bytes of its address block (two addresses, two ports). */
const V2_FAMILIES: Record<number, { name: string; block: number; address: number } | undefined> = {
  0x0: { name: 'UNSPEC', block: 0, address: 0 },
  0x1: { name: 'INET', block: 12, address: 4 },
  0x2: { name: 'INET6', block: 36, address: 16 },
  0x3: { name: 'UNIX', block: 216, address: 0 },
};

function parseV2(bytes: Uint8Array): ProxyHeader {
  if (bytes.length < V2_FIXED) return { status: 'incomplete' };
  const versionCommand = bytes[12] ?? 0;
  const familyProtocol = bytes[13] ?? 0;
  const bodyLength = ((bytes[14] ?? 0) << 8) | (bytes[15] ?? 0);
  if (versionCommand >> 4 !== 0x2) return { status: 'invalid', reason: `v2 header with version ${versionCommand >> 4}` };
  const command = versionCommand & 0x0f;
  if (command > 1) return { status: 'invalid', reason: `v2 header with unknown command ${command}` };
  const family = V2_FAMILIES[familyProtocol >> 4];
  const protocol = familyProtocol & 0x0f;
  if (!family || protocol > 2) return { status: 'invalid', reason: `v2 header with unknown address family or protocol 0x${familyProtocol.toString(16).padStart(2, '0')}` };
  const length = V2_FIXED + bodyLength;
  if (bytes.length < length) return { status: 'incomplete' };
  // LOCAL: the balancer's own connection (health checks); the address block is to be ignored.
  if (command === 0) return { status: 'ok', length, version: 2, command: 'local', source: null, destination: null };
  if (bodyLength < family.block) return { status: 'invalid', reason: `v2 header of ${bodyLength} bytes, too short for a ${family.name} address block` };
  // What follows the addresses (TLVs: ALPN, authority, CRC32C, unique id, SSL, cloud vendors' own) is ignored.
  if (family.address === 0 || protocol !== 1) return { status: 'ok', length, version: 2, command: 'unknown', source: null, destination: null };
  const at = V2_FIXED;
  const size = family.address;
  const port = (offset: number) => ((bytes[offset] ?? 0) << 8) | (bytes[offset + 1] ?? 0);
  return {
    status: 'ok',
    length,
    version: 2,
    command: 'proxy',
    source: { address: formatIP(bytes.subarray(at, at + size)), port: port(at + 2 * size) },
    destination: { address: formatIP(bytes.subarray(at + size, at + 2 * size)), port: port(at + 2 * size + 2) },
  };
}
