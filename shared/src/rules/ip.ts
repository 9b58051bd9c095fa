/** Expand an IPv6 address to eight 4-digit groups (`2001:db8::1` -> 2001, 0db8, 0000, ...). */
export function expandIPv6(address: string): string[] {
  let text = address;
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const [a = 0, b = 0, c = 0, d = 0] = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const fill = tail === undefined ? [] : Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0');
  return [...left, ...fill, ...right].map((group) => group.padStart(4, '0').toLowerCase());
}

/** The four bytes of a dotted-quad IPv4 address (decimal, no leading zeros, as inet_pton), or null. */
export function parseIPv4(text: string): number[] | null {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((part) => /^(?:0|[1-9]\d{0,2})$/.test(part))) return null;
  const bytes = parts.map(Number);
  return bytes.every((byte) => byte <= 255) ? bytes : null;
}

/** The sixteen bytes of an IPv6 address in text form (RFC 4291 2.2, an IPv4 tail allowed, no zone), or null. */
export function parseIPv6(text: string): number[] | null {
  if (!/^[0-9A-Fa-f:.]{2,45}$/.test(text)) return null;
  let hex = text;
  let tail: number[] = [];
  if (text.includes('.')) {
    const lastColon = text.lastIndexOf(':');
    const v4 = parseIPv4(text.slice(lastColon + 1));
    if (!v4) return null;
    tail = v4;
    hex = text.slice(0, lastColon + 1);
    if (!hex.endsWith('::')) hex = hex.slice(0, -1);
  }
  const halves = hex.split('::');
  if (halves.length > 2) return null;
  const left = halves[0] ? halves[0].split(':') : [];
  const right = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const missing = (tail.length ? 6 : 8) - left.length - right.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...left, ...Array<string>(missing).fill('0'), ...right];
  if (!groups.every((group) => /^[0-9A-Fa-f]{1,4}$/.test(group))) return null;
  return [...groups.flatMap((group) => [parseInt(group, 16) >> 8, parseInt(group, 16) & 0xff]), ...tail];
}

/** The bytes of an IPv4 or IPv6 address in text form (4 or 16 of them), or null if it is neither. */
export function parseIP(text: string): number[] | null {
  return parseIPv4(text) ?? parseIPv6(text);
}

/**
 * The text form of 4 or 16 address bytes: dotted quad for IPv4 and for IPv4-mapped IPv6
 * (`::ffff:192.0.2.1` is shown as `192.0.2.1`, as a dual-stack listener's IPv4 clients should be),
 * otherwise RFC 5952 (lower case, no leading zeros, the first longest run of two or more zero
 * groups as `::`).
 */
export function formatIP(bytes: ArrayLike<number>): string {
  const all = unmapped(Array.from(bytes));
  if (all.length === 4) return all.join('.');
  const groups = Array.from({ length: 8 }, (_, index) => ((all[2 * index] ?? 0) << 8) | (all[2 * index + 1] ?? 0));
  let bestStart = -1;
  let bestLength = 1;
  for (let start = 0; start < 8; start += 1) {
    let end = start;
    while (end < 8 && groups[end] === 0) end += 1;
    if (end - start > bestLength) [bestStart, bestLength] = [start, end - start];
    start = Math.max(start, end);
  }
  const text = groups.map((group) => group.toString(16));
  if (bestStart < 0) return text.join(':');
  return `${text.slice(0, bestStart).join(':')}::${text.slice(bestStart + bestLength).join(':')}`;
}

/** The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`); other addresses as they are. */
export function unmapped(bytes: number[]): number[] {
  const mapped = bytes.length === 16 && bytes.slice(0, 10).every((byte) => byte === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? bytes.slice(12) : bytes;
}

/** An address range: the network's bytes and the prefix length. */
export interface Cidr {
  bytes: number[];
  prefix: number;
}

/**
 * `192.0.2.0/24`, `2001:db8::/32`, or a single address (a /32 or /128). An IPv4-mapped IPv6
 * range is taken as the IPv4 range it maps. When it is not one, the reason: a bad address, a bad
 * prefix, or bits set past the prefix (`10.0.0.1/8`, which Postfix refuses too).
 */
export function parseCidr(text: string): Cidr | { error: string } {
  const [address = '', prefixText, extra] = text.trim().split('/');
  let bytes = parseIP(address);
  if (!bytes || extra !== undefined) return { error: `not an IP address or CIDR range: ${JSON.stringify(text)}` };
  const bits = bytes.length * 8;
  let prefix = prefixText === undefined ? bits : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix >= 0 && prefix <= bits)) return { error: `bad prefix length in ${JSON.stringify(text)} (0 to ${bits})` };
  if (bytes.length === 16 && prefix >= 96 && unmapped(bytes).length === 4) {
    bytes = unmapped(bytes);
    prefix -= 96;
  }
  if (!bytes.every((byte, index) => (byte & ~prefixMask(prefix, index)) === 0)) {
    return { error: `${JSON.stringify(text)} has bits set past the /${prefix}: did you mean ${formatIP(bytes.map((byte, index) => byte & prefixMask(prefix, index)))}/${prefix}?` };
  }
  return { bytes, prefix };
}

/** The mask byte at `index` for a prefix of `prefix` bits. */
function prefixMask(prefix: number, index: number): number {
  const bits = Math.max(0, Math.min(8, prefix - 8 * index));
  return (0xff << (8 - bits)) & 0xff;
}

/** Whether an address (text; IPv4-mapped IPv6 counts as IPv4) lies in one of the ranges. */
export function inRanges(address: string, ranges: readonly Cidr[]): boolean {
  const parsed = parseIP(address);
  if (!parsed) return false;
  const own = unmapped(parsed);
  return ranges.some((range) => range.bytes.length === own.length && own.every((byte, index) => ((byte ^ (range.bytes[index] ?? 0)) & prefixMask(range.prefix, index)) === 0));
}

/**
 * The unit per-client limits apply to: an IPv4 address as it is (also when IPv4-mapped), an IPv6
 * address by its /64 (one customer usually holds a whole /64, so counting single addresses would
 * limit nothing). Anything else (a zone-scoped address, a socket path) is its own unit.
 */
export function clientKey(address: string): string {
  const plain = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '');
  if (!parseIPv6(plain)) return plain;
  return `${expandIPv6(plain).slice(0, 4).join(':')}::/64`;
}
