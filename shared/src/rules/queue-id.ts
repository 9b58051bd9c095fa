/**
 * A queue id: time-ordered (milliseconds in base 32) then 40 random bits, upper case, 17 characters,
 * safe in file names, URLs and headers.
 */
export function newQueueId(now = Date.now()): string {
  const time = now.toString(32).toUpperCase().padStart(9, '0');
  const random = randomBits40().toString(32).toUpperCase().padStart(8, '0');
  return `${time}${random}`;
}

/**
 * Random bytes from the Web Crypto API (every runtime has it, no permission needed), fetched a few
 * kilobytes at a time: each call costs the same whatever its size (about 15 us on a busy machine,
 * once per message), and the bytes are as random either way.
 */
const pool = new Uint8Array(5 * 1024);
let used = pool.length;

/** 40 random bits (queue ids, smtp-server's session ids). */
export function randomBits40(): number {
  if (used + 5 > pool.length) {
    crypto.getRandomValues(pool);
    used = 0;
  }
  let value = 0;
  for (const end = used + 5; used < end; used++) value = value * 256 + (pool[used] ?? 0);
  return value;
}
