/**
 * The text form of a password hash in the configuration (domain viewers of the web console): the
 * PHC string format for scrypt, `$scrypt$ln=15,r=8,p=1$<salt>$<hash>`, salt and hash in base64
 * without padding. `backupmx hash-password` writes it; the console verifies with node:crypto.
 */
export interface ScryptHash {
  /** log2 of scrypt's cost N. */
  ln: number;
  r: number;
  p: number;
  /** Base64 (no padding), as written. */
  salt: string;
  hash: string;
}

/** Bounds that keep one verification within memory (128 * N * r bytes) and time. */
const LIMITS = { ln: [10, 20], r: [1, 32], p: [1, 16] } as const;

const PHC = /^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9+/]{22,})\$([A-Za-z0-9+/]{43,})$/;

/** The parts of a `$scrypt$...` hash, or null when the text is not one (or asks for absurd costs). */
export function parsePasswordHash(text: string): ScryptHash | null {
  const match = PHC.exec(text.trim());
  if (!match) return null;
  const [ln, r, p] = [match[1], match[2], match[3]].map(Number) as [number, number, number];
  const within = (value: number, [min, max]: readonly [number, number]) => value >= min && value <= max;
  if (!within(ln, LIMITS.ln) || !within(r, LIMITS.r) || !within(p, LIMITS.p)) return null;
  return { ln, r, p, salt: match[4] as string, hash: match[5] as string };
}

export function formatPasswordHash(hash: ScryptHash): string {
  return `$scrypt$ln=${hash.ln},r=${hash.r},p=${hash.p}$${hash.salt}$${hash.hash}`;
}
