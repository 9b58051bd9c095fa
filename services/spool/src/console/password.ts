import { Buffer } from 'node:buffer';
import { randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { formatPasswordHash, parsePasswordHash, type ScryptHash } from '@backupmx/shared/rules/password-hash.ts';

/** scrypt N = 2^15, r = 8, p = 1: 32 MiB and about 0.1 s per check (RFC 7914; OWASP's floor for scrypt). */
const DEFAULT = { ln: 15, r: 8, p: 1 } as const;
const KEY_BYTES = 32;

function derive(password: string, salt: Buffer, cost: Pick<ScryptHash, 'ln' | 'r' | 'p'>, bytes: number): Promise<Buffer> {
  const N = 2 ** cost.ln;
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, bytes, { N, r: cost.r, p: cost.p, maxmem: 256 * N * cost.r + 1024 * 1024 }, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

const b64 = (bytes: Buffer) => bytes.toString('base64').replace(/=+$/, '');

/** A new `$scrypt$...` hash of `password` with a random salt (for `backupmx hash-password`). */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await derive(password, salt, DEFAULT, KEY_BYTES);
  return formatPasswordHash({ ...DEFAULT, salt: b64(salt), hash: b64(key) });
}

/** A hash nobody's password matches: checked for unknown user names, so that they take as long as known ones. */
const DECOY = formatPasswordHash({ ...DEFAULT, salt: b64(randomBytes(16)), hash: b64(randomBytes(KEY_BYTES)) });

/** True when `password` matches `hashText` (constant-time comparison). An undefined hash is checked against a decoy. */
export async function verifyPassword(password: string, hashText: string | undefined): Promise<boolean> {
  const parsed = parsePasswordHash(hashText ?? DECOY);
  if (!parsed) return false;
  const expected = Buffer.from(parsed.hash, 'base64');
  const key = await derive(password, Buffer.from(parsed.salt, 'base64'), parsed, expected.length);
  return timingSafeEqual(key, expected) && hashText !== undefined;
}
