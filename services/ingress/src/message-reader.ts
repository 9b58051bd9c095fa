import { Buffer } from 'node:buffer';
import type { Readable } from 'node:stream';

/**
 * Measures the header section of a message as it streams in: everything up to and including the
 * first empty line (CRLF or bare LF). `over` turns true as soon as it is known to exceed `limit`.
 */
export function createHeaderMeter(limit: number) {
  let consumed = 0;
  // A leading "\n" stands for the start of the message, so that an empty first line ends it.
  let carry = '\n';
  let size: number | null = null;
  return {
    push(chunk: Buffer): void {
      if (size !== null || consumed > limit) return;
      const text = carry + chunk.toString('latin1');
      const end = /\n\r?\n/.exec(text);
      if (end) {
        size = consumed + end.index - carry.length + end[0].length;
        return;
      }
      consumed += chunk.length;
      carry = text.slice(-2);
    },
    /** Bytes of the header section, once its end was seen. */
    get size(): number | null {
      return size;
    },
    get over(): boolean {
      return size === null ? consumed > limit : size > limit;
    },
  };
}

export type ReadResult = { body: Buffer; refused: null } | { body: null; refused: 'size' | 'header' };

/**
 * Read a whole DATA stream (smtp-server replies only once it has ended), keeping at most
 * `maxSize` bytes, and say whether the message or its header section is too large. Rejects when
 * the stream fails (the client went away mid-DATA).
 */
export function readMessage(stream: Readable & { sizeExceeded?: boolean }, maxSize: number, maxHeaderSize: number): Promise<ReadResult> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const header = createHeaderMeter(maxHeaderSize);
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= maxSize) chunks.push(chunk);
      header.push(chunk);
    });
    stream.once('end', () => {
      if (stream.sizeExceeded || size > maxSize) return resolve({ body: null, refused: 'size' });
      if (header.over) return resolve({ body: null, refused: 'header' });
      resolve({ body: Buffer.concat(chunks, size), refused: null });
    });
    stream.once('error', reject);
  });
}
