import { Buffer } from 'node:buffer';
import type { Readable } from 'node:stream';
import { passedThrough } from '@backupmx/shared/runtime/young-gc.ts';
import { movableBody } from '@backupmx/shared/store/store-thread.ts';

const LF = 0x0a;
const CR = 0x0d;

/**
 * Index in `chunk` of the LF that ends a message's header section (RFC 5322 2.1: the first empty
 * line, CRLF or bare LF; an empty line first means an empty header section), or -1. `before` holds
 * the last bytes before the chunk (two are enough), `seen` how many bytes came before it. Shared
 * with mailauth-header-scan.ts, whose rule for mailauth's DKIM parser is the same.
 */
export function headerEnd(chunk: Buffer, before: readonly number[], seen: number): number {
  const at = (i: number): number | undefined => (i >= 0 ? chunk[i] : before[before.length + i]);
  for (let i = chunk.indexOf(LF); i !== -1; i = chunk.indexOf(LF, i + 1)) {
    const b1 = at(i - 1);
    const count = seen + i + 1;
    if (b1 === LF || (b1 === CR && at(i - 2) === LF) || count === 1 || (count === 2 && b1 === CR)) return i;
  }
  return -1;
}

/**
 * Measures the header section of a message as it streams in: everything up to and including the
 * first empty line (CRLF or bare LF). `over` turns true as soon as it is known to exceed `limit`.
 * It looks only at the line ends of each chunk (it used to make a string of every chunk and search
 * that: a tenth of what ingress allocated per message in a heap profile).
 */
export function createHeaderMeter(limit: number) {
  let consumed = 0;
  // The last two bytes before the next chunk.
  let before: number[] = [];
  let size: number | null = null;
  return {
    push(chunk: Buffer): void {
      if (size !== null || consumed > limit) return;
      const end = headerEnd(chunk, before, consumed);
      if (end !== -1) {
        size = consumed + end + 1;
        return;
      }
      consumed += chunk.length;
      before = [...before, ...chunk.subarray(-2)].slice(-2);
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
 * A message read whole: its bytes in `chunks` (one buffer when the sender declared its SIZE, else
 * the chunks as they came), `size` bytes in all, of which the first `headerSize` are the header
 * section. `join(ours)` gives the one copy that is stored: our header fields, then the sender's bytes.
 */
export interface ReadMessage {
  chunks: Buffer[];
  size: number;
  headerSize: number;
  /** `ours` followed by the message, in one buffer; the message's chunks are let go. */
  join(ours: Buffer): Buffer;
}

/** Bytes kept free in front of a preallocated body, for our own header fields (Received, Authentication-Results). */
export const HEADROOM = 16 * 1024;

/** A declared SIZE from this many bytes up gets its buffer at once (below, the chunks are joined at the end). */
export const PREALLOCATE_FROM = 1024 * 1024;

/** A buffer of `bytes`, or null where the system refuses that much address space (the chunks are kept then). */
function allocate(bytes: number): Buffer | null {
  try {
    return Buffer.allocUnsafe(bytes);
  } catch {
    return null;
  }
}

/**
 * Where a message's bytes go as they come. With the SIZE the client declared in MAIL FROM (RFC 1870),
 * one buffer of HEADROOM + SIZE bytes takes them, so the sender's bytes are copied once and then
 * stored as they are, our header fields written into the headroom: the message is held once, not
 * as chunks plus their join (issue 9, part 3). Untouched pages of that buffer take no memory, so a
 * client that declares more than it sends costs nothing. Without SIZE (or when the message outgrows
 * it), the chunks are kept and joined behind our fields at the end.
 */
function createBody(declared: number | null) {
  let slab = declared !== null && declared >= PREALLOCATE_FROM ? allocate(HEADROOM + declared) : null;
  let filled = 0;
  let chunks: Buffer[] = [];
  return {
    push(chunk: Buffer): void {
      if (slab && filled + chunk.length <= slab.length - HEADROOM) {
        chunk.copy(slab, HEADROOM + filled);
        filled += chunk.length;
        return;
      }
      if (slab) chunks.push(slab.subarray(HEADROOM, HEADROOM + filled)); // outgrew its SIZE
      slab = null;
      chunks.push(chunk);
    },
    drop(): void {
      slab = null;
      chunks = [];
    },
    message(size: number, headerSize: number): ReadMessage {
      let whole = slab;
      let kept = chunks;
      slab = null;
      chunks = [];
      const message: ReadMessage = {
        chunks: whole ? [whole.subarray(HEADROOM, HEADROOM + filled)] : kept,
        size,
        headerSize,
        join(ours) {
          const buffer = whole;
          const parts = kept;
          whole = null;
          kept = [];
          message.chunks = [];
          // In place, unless our fields do not fit in front or the buffer is mostly unused (a SIZE far above what came).
          if (buffer && ours.length <= HEADROOM && 2 * filled >= buffer.length - HEADROOM) {
            ours.copy(buffer, HEADROOM - ours.length);
            return movableBody(buffer.subarray(HEADROOM - ours.length, HEADROOM + filled)); // nothing else reads the buffer now
          }
          return Buffer.concat([ours, ...(buffer ? [buffer.subarray(HEADROOM, HEADROOM + filled)] : parts)], ours.length + size);
        },
      };
      return message;
    },
  };
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
 * `maxSize` bytes (in one buffer when the client `declared` a SIZE of at most `maxSize`), and say whether the message or its header section is too large. With a
 * `budget`, every kept chunk is reserved from it; when one does not fit, what was kept is dropped
 * and given back at once, the rest is discarded, and the result is `refused: 'memory'`. On success
 * the caller owns `reserved` bytes of the budget and releases them when done with the body.
 * Rejects when the stream fails (the client went away mid-DATA); nothing stays reserved then.
 */
export function readMessage(stream: Readable & { sizeExceeded?: boolean }, maxSize: number, maxHeaderSize: number, budget?: ReadBudget, declared: number | null = null): Promise<ReadResult> {
  return new Promise((resolve, reject) => {
    const body = createBody(declared !== null && declared <= maxSize ? declared : null);
    const header = createHeaderMeter(maxHeaderSize);
    let size = 0;
    let reserved = 0;
    let overBudget = false;
    const drop = () => {
      body.drop();
      budget?.release(reserved);
      reserved = 0;
    };
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      passedThrough(chunk.length); // the socket's read and smtp-server's copy of it are garbage now
      header.push(chunk);
      if (overBudget) return;
      if (size > maxSize) return drop();
      if (budget && !budget.reserve(chunk.length)) {
        overBudget = true;
        return drop();
      }
      reserved += chunk.length;
      body.push(chunk);
    });
    stream.once('end', () => {
      const refused = stream.sizeExceeded || size > maxSize ? 'size' : header.over ? 'header' : overBudget ? 'memory' : null;
      if (refused) {
        drop();
        return resolve({ message: null, refused, reserved: 0 });
      }
      resolve({ message: body.message(size, header.size ?? size), refused: null, reserved });
    });
    stream.once('error', (error) => {
      drop();
      reject(error);
    });
  });
}

/** The SIZE the client declared in MAIL FROM (RFC 1870: 1*20DIGIT, checked by smtp-server), or null. */
export function declaredSize(envelope: { mailFrom: false | { args?: object | false } }): number | null {
  const args = envelope.mailFrom ? envelope.mailFrom.args : false;
  const size = args ? (args as Record<string, unknown>).SIZE : undefined;
  if (typeof size !== 'string' || !/^\d{1,20}$/.test(size)) return null;
  const value = Number(size);
  return Number.isSafeInteger(value) ? value : null;
}
