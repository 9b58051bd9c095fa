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

export type ReadResult = { body: Buffer; refused: null; reserved: number } | { body: null; refused: 'size' | 'header' | 'memory'; reserved: 0 };

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
        return resolve({ body: null, refused, reserved: 0 });
      }
      const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size);
      chunks = [];
      resolve({ body, refused: null, reserved });
    });
    stream.once('error', (error) => {
      drop();
      reject(error);
    });
  });
}
