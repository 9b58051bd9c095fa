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

/**
 * A message read whole: its chunks as they came (not joined: the caller joins them once, behind our
 * own header fields, so that a large message is not copied twice), `size` bytes in all, of which the
 * first `headerSize` are the header section.
 */
export interface ReadMessage {
  chunks: Buffer[];
  size: number;
  headerSize: number;
}

export type ReadResult = { message: ReadMessage; refused: null; reserved: number } | { message: null; refused: 'size' | 'header' | 'memory'; reserved: 0 };

/** The first `bytes` bytes of the chunks (the header section), copied out of them. */
export function leadingBytes(chunks: Buffer[], bytes: number): Buffer {
  const taken: Buffer[] = [];
  let left = bytes;
  for (const chunk of chunks) {
    if (left <= 0) break;
    taken.push(chunk.length <= left ? chunk : chunk.subarray(0, left));
    left -= chunk.length;
  }
  return Buffer.concat(taken);
}

/** Bytes held in memory across sessions (MEMORY_BUDGET); see memory-budget.ts. */
export interface ReadBudget {
  reserve(bytes: number): boolean;
  release(bytes: number): void;
}

/**
 * Read a whole DATA stream (smtp-server replies only once it has ended), keeping at most
 * `maxSize` bytes, and say whether the message or its header section is too large. With a
 * `budget`, every kept chunk is reserved from it; when one does not fit, what was kept is dropped
 * and given back at once, the rest is discarded, and the result is `refused: 'memory'`. On success
 * the caller owns `reserved` bytes of the budget and releases them when done with the body.
 * Rejects when the stream fails (the client went away mid-DATA); nothing stays reserved then.
 */
export function readMessage(stream: Readable & { sizeExceeded?: boolean }, maxSize: number, maxHeaderSize: number, budget?: ReadBudget): Promise<ReadResult> {
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    const header = createHeaderMeter(maxHeaderSize);
    let size = 0;
    let reserved = 0;
    let overBudget = false;
    const drop = () => {
      chunks = [];
      budget?.release(reserved);
      reserved = 0;
    };
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      header.push(chunk);
      if (overBudget) return;
      if (size > maxSize) return drop();
      if (budget && !budget.reserve(chunk.length)) {
        overBudget = true;
        return drop();
      }
      reserved += chunk.length;
      chunks.push(chunk);
    });
    stream.once('end', () => {
      const refused = stream.sizeExceeded || size > maxSize ? 'size' : header.over ? 'header' : overBudget ? 'memory' : null;
      if (refused) {
        drop();
        return resolve({ message: null, refused, reserved: 0 });
      }
      resolve({ message: { chunks, size, headerSize: header.size ?? size }, refused: null, reserved });
    });
    stream.once('error', (error) => {
      drop();
      reject(error);
    });
  });
}
