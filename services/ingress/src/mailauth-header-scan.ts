/**
 * mailauth finds the end of a message's header section (for DKIM and ARC) byte by byte, copying an
 * array of the last four bytes at every byte (lib/dkim/message-parser.js, processChunk): for the
 * bench's 4 KB messages that was 34 KB of garbage per message, about a fifth of everything ingress
 * allocated, on the one thread that runs every SMTP session (a sampling heap profile of `npm start`
 * under smtp-source). This replaces the header scan with one that looks only at line ends; the
 * rule is mailauth's own, unchanged: the section ends at the first LF that follows an LF or a CRLF,
 * or at an LF (or CRLF) that starts the message (RFC 5322 2.1: an empty header section). The body
 * state is mailauth's code as it is.
 */
import type { Buffer } from 'node:buffer';
import { createRequire } from 'node:module';
import { headerEnd } from './message-reader.ts';

/** The part of mailauth's MessageParser this reads and keeps as the original does. */
export interface HeaderScanState {
  state: 'header' | 'body';
  /** The last (up to) four bytes of the header section seen so far. */
  stateBytes: number[];
  /** Bytes of the header section seen so far. */
  headerBytes: number;
  headerChunks: Buffer[];
  emitHeaders(chunk?: Buffer): Promise<void>;
  nextChunk(chunk: Buffer): Promise<void>;
}

export async function processChunk(this: HeaderScanState, input: Buffer): Promise<void> {
  let chunk = input;
  if (!chunk || !chunk.length) return;
  if (this.state === 'header') {
    const end = headerEnd(chunk, this.stateBytes, this.headerBytes);
    const scanned = end === -1 ? chunk.length : end + 1;
    this.headerBytes += scanned;
    this.stateBytes = [...this.stateBytes, ...chunk.subarray(Math.max(0, scanned - 4), scanned)].slice(-4);
    if (end === chunk.length - 1) return this.emitHeaders(chunk);
    if (end !== -1) {
      await this.emitHeaders(chunk.subarray(0, end + 1));
      chunk = chunk.subarray(end + 1);
    }
  }
  if (this.state !== 'body') {
    this.headerChunks.push(chunk);
    return;
  }
  await this.nextChunk(chunk);
}

const parserModule = createRequire(import.meta.url)('mailauth/lib/dkim/message-parser.js') as { MessageParser: { prototype: { processChunk: unknown } } };
/** mailauth's own, for the tests that compare the two. */
export const originalProcessChunk = parserModule.MessageParser.prototype.processChunk as (this: HeaderScanState, chunk: Buffer) => Promise<void>;
if (typeof originalProcessChunk !== 'function') throw new Error('mailauth changed: no MessageParser.prototype.processChunk (services/ingress/src/mailauth-header-scan.ts)');
parserModule.MessageParser.prototype.processChunk = processChunk;
