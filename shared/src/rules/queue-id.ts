import { randomBytes } from 'node:crypto';

/**
 * A queue id: time-ordered (milliseconds in base 32) then 40 random bits, upper case, 17 characters,
 * safe in file names, URLs and headers.
 */
export function newQueueId(now = Date.now()): string {
  const time = now.toString(32).toUpperCase().padStart(9, '0');
  const random = randomBytes(5).readUIntBE(0, 5).toString(32).toUpperCase().padStart(8, '0');
  return `${time}${random}`;
}
