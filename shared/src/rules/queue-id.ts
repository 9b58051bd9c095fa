/**
 * A queue id: time-ordered (milliseconds in base 32) then 40 random bits, upper case, 17 characters,
 * safe in file names, URLs and headers.
 */
export function newQueueId(now = Date.now()): string {
  const time = now.toString(32).toUpperCase().padStart(9, '0');
  const random = randomBits40().toString(32).toUpperCase().padStart(8, '0');
  return `${time}${random}`;
}

/** 40 random bits from the Web Crypto API (every runtime has it, no permission needed). */
function randomBits40(): number {
  const bytes = crypto.getRandomValues(new Uint8Array(5));
  return bytes.reduce((value, byte) => value * 256 + byte, 0);
}
