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
 * while they are young. Returns a stop function; does nothing where gc() cannot be exposed.
 */
export function startBufferCollector(afterBytes = COLLECT_AFTER_BYTES, everyMs = CHECK_EVERY_MS): () => void {
  const gc = exposeGc();
  if (!gc) return () => {};
  let base = process.memoryUsage().arrayBuffers;
  const timer = setInterval(() => {
    const now = process.memoryUsage().arrayBuffers;
    if (now < base) base = now;
    else if (now - base >= afterBytes) {
      gc({ type: 'minor' });
      base = process.memoryUsage().arrayBuffers;
    }
  }, everyMs);
  timer.unref();
  return () => clearInterval(timer);
}
