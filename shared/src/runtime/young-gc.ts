import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Gc = (options?: { type?: 'minor' | 'major'; execution?: 'sync' | 'async' }) => void;

/** V8's gc(), exposed at runtime (no command-line flag needed); null where the runtime refuses. */
function exposeGc(): Gc | null {
  try {
    setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    return typeof gc === 'function' ? (gc as Gc) : null;
  } catch {
    return null;
  }
}

/** Growth of buffer memory (process.memoryUsage().arrayBuffers) that triggers a collection. */
export const COLLECT_AFTER_BYTES = 4 * 1024 * 1024;
export const CHECK_EVERY_MS = 20;

/**
 * Large mail leaves buffers behind that nobody holds any more: the socket's reads, which smtp-server
 * and amqplib copy before keeping, amqplib's frames, the store's parts once sent. V8 frees a buffer
 * only when a collection runs, and buffers hardly fill its heap, so without help tens of MiB of them
 * pile up during one 25 MB message (issue 9, part 3). This checks buffer memory every
 * CHECK_EVERY_MS and, when it grew by COLLECT_AFTER_BYTES since the last look after a collection,
 * runs a young-generation collection (a scavenge, about a millisecond), which frees such buffers
 * while they are young; bodyReleased() asks for a full collection for a large body that outlived
 * them. Returns a stop function; does nothing where gc() cannot be exposed (or, as under Deno,
 * buffer memory is not counted).
 */
export function startBufferCollector(afterBytes = COLLECT_AFTER_BYTES, everyMs = CHECK_EVERY_MS): () => void {
  const gc = exposeGc();
  if (!gc) return () => {};
  let soon: ReturnType<typeof setTimeout> | null = null;
  fullSoon = () => {
    soon ??= setTimeout(() => {
      soon = null;
      gc({ type: 'major' });
      base = buffers();
    }, FULL_DELAY_MS);
    soon.unref();
  };
  const buffers = () => process.memoryUsage().arrayBuffers;
  let base = buffers();
  minorNow = () => {
    gc({ type: 'minor' });
    base = buffers();
  };
  const timer = setInterval(() => {
    const now = buffers();
    if (now < base) base = now;
    else if (now - base >= afterBytes) {
      gc({ type: 'minor' });
      base = buffers();
    }
  }, everyMs);
  timer.unref();
  return () => {
    clearInterval(timer);
    if (soon) clearTimeout(soon);
    fullSoon = null;
    minorNow = null;
  };
}

/** Bytes of a large message's data that pass through a path (passedThrough) between its collections. */
export const COLLECT_EVERY_BYTES = 2 * 1024 * 1024;
let minorNow: (() => void) | null = null;
let passed = 0;

/**
 * `bytes` of a message's data went through a copy that leaves its source behind: a socket's read
 * and smtp-server's copy of it (ingress), amqplib's frames (sent or received), the store's parts
 * once sent. Every COLLECT_EVERY_BYTES of them run a scavenge at once. The timer above looks only
 * between turns of the event loop, and a 25 MB message arriving or framed on loopback keeps the loop
 * busy for 50 ms and more: tens of MiB of such buffers were alive at once, at the peak of the
 * process's RSS, and those under glibc's mmap threshold (64 KiB socket reads) stayed in its heap
 * after (issue 9, part 3).
 */
export function passedThrough(bytes: number): void {
  passed += bytes;
  if (passed < COLLECT_EVERY_BYTES || !minorNow) return;
  passed = 0;
  minorNow();
}

/** How long after a large body was let go its full collection runs: other bodies let go meanwhile share it. */
export const FULL_DELAY_MS = 10;
/** Bodies from this size up ask for a full collection when they are let go (bodyReleased). */
export const LARGE_BODY_BYTES = 4 * 1024 * 1024;
let fullSoon: (() => void) | null = null;

/**
 * A message body of `bytes` is no longer needed (stored, sent, refused). A large one lived long
 * enough to be promoted, so only a full collection frees it, and V8 would run one when its own heap
 * fills, not for buffers: a 25 MB body stayed beside the next one's copies (issue 9, part 3). From
 * LARGE_BODY_BYTES up this runs a full collection shortly, when the buffer collector runs.
 */
export function bodyReleased(bytes: number): void {
  if (bytes >= LARGE_BODY_BYTES) fullSoon?.();
}
