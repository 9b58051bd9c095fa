/**
 * The SQLite store on a thread of its own. node:sqlite is synchronous: every INSERT, every COMMIT's
 * WAL writes, every claim and settle ran on the event loop's thread, between the SMTP sessions'
 * replies (about a sixth of that thread's time under `npm run bench`, issue 9). Here the store runs
 * in a worker thread of the same process (store-worker.mjs, store-thread-main.ts) and this side forwards each call to it.
 * A call resolves only when the store in the thread has resolved it, so put() still resolves only
 * once the write is durable. A thread that dies takes the process with it (exit 1), as a crash of
 * the store itself would: nothing is ever answered on its behalf, and the spool recovers on restart.
 */
import { Buffer } from 'node:buffer';
import { Readable } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { ConfigError } from '../runtime/config.ts';
import type { Logger } from '../runtime/logger.ts';
import { passedThrough } from '../runtime/young-gc.ts';
import type { ReceivedMail } from '../types.ts';
import type { Store } from './store.ts';

/** Main thread to store thread. */
export type Request = { t: 'call'; id: number; method: string; args: unknown[] } | { t: 'pull'; id: number } | { t: 'drop'; id: number };
/** Store thread to main thread. */
export type Reply =
  | { t: 'open' }
  | { t: 'fail'; error: WireError }
  | { t: 'result'; id: number; value: unknown }
  | { t: 'error'; id: number; error: WireError }
  /** readBody's answer with the body's first chunk, then each next chunk (null: none) as asked. */
  | { t: 'stream' | 'chunk'; id: number; chunk: Uint8Array | null; end: boolean }
  | { t: 'state'; ready: boolean; spare: number | null }
  | { t: 'log'; level: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace'; fields: Record<string, unknown>; message: string };

/** An error as it crosses threads: what callers look at (message, name, code, SQLite's errcode). */
export interface WireError {
  name: string;
  message: string;
  code?: unknown;
  errcode?: unknown;
  errstr?: unknown;
  /** A setting is wrong (the file cannot be opened): a ConfigError on this side. */
  config: boolean;
}

function fromWire(wire: WireError): Error {
  if (wire.config) return new ConfigError(wire.message);
  const error = new Error(wire.message);
  error.name = wire.name;
  for (const key of ['code', 'errcode', 'errstr'] as const) if (wire[key] !== undefined) Object.assign(error, { [key]: wire[key] });
  return error;
}

const asBuffer = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * A body at least this large moves to the store thread instead of being copied (a 25 MB message
 * must not cost twice its size for the time of its write); the caller's Buffer is empty after.
 */
export const MOVE_BODY_FROM = 64 * 1024;

/** Buffers whose memory the code that made them holds alone, though they do not start at its first byte. */
const owned = new WeakSet<ArrayBufferLike>();

/**
 * Say that nobody else uses `body`'s memory (a buffer received into, with room left in front): then
 * put() may move it to the store's thread even though it is a view into a larger allocation. Any
 * other body moves only when it is a buffer of its own, never a slice that others may still read.
 */
export function movableBody(body: Buffer): Buffer {
  owned.add(body.buffer);
  return body;
}

/** The calls forwarded as they are (ready, spareBytes and close are answered here). */
const FORWARDED = [
  'put', 'claim', 'renew', 'settle', 'readBody', 'getMessage', 'list', 'hold', 'release', 'retryNow', 'remove',
  'bulk', 'activity', 'takeDelayWarnings', 'purge', 'routes', 'nextDue', 'stats', 'cacheGet', 'cachePut',
] as const satisfies ReadonlyArray<keyof Store>;

/**
 * Open the SQLite store at `path` in a thread of its own and return a Store that forwards to it. A
 * file that cannot be opened rejects as openSqliteStore would, as a ConfigError naming DATA_DIR.
 */
export async function openStoreThread(path: string, log: Logger): Promise<Store> {
  const worker = new Worker(new URL('./store-worker.mjs', import.meta.url), { workerData: { path } });
  const calls = new Map<number, { resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  const streams = new Map<number, Readable>();
  let nextId = 0;
  let ready = false;
  let spare: number | null = null;
  let closing = false;
  const post = (request: Request, transfer?: ArrayBuffer[]) => worker.postMessage(request, transfer);

  function body(id: number, first: Uint8Array | null, end: boolean): Readable {
    let ended = end;
    const stream = new Readable({
      read: () => {
        if (!ended) post({ t: 'pull', id });
      },
      destroy: (error, done) => {
        if (streams.delete(id) && !ended) post({ t: 'drop', id });
        done(error);
      },
    });
    if (first) stream.push(asBuffer(first));
    if (end) stream.push(null);
    else streams.set(id, stream);
    return Object.assign(stream, {
      ended: () => {
        ended = true;
        streams.delete(id);
      },
    });
  }

  const opened = new Promise<void>((resolve, reject) => {
    worker.on('message', (reply: Reply) => {
      switch (reply.t) {
        case 'open':
          ready = true;
          return resolve();
        case 'fail':
          return reject(fromWire(reply.error));
        case 'state':
          ready = reply.ready && !closing;
          spare = reply.spare;
          return;
        case 'log':
          return log[reply.level](reply.fields, reply.message);
        case 'stream': {
          const call = calls.get(reply.id);
          calls.delete(reply.id);
          return call?.resolve(body(reply.id, reply.chunk, reply.end));
        }
        case 'chunk': {
          const stream = streams.get(reply.id) as (Readable & { ended(): void }) | undefined;
          if (!stream) return;
          if (reply.end) stream.ended();
          if (reply.chunk) {
            passedThrough(reply.chunk.byteLength); // the parts before it, and the client's copies of them, are garbage now
            stream.push(asBuffer(reply.chunk));
          }
          if (reply.end) stream.push(null);
          return;
        }
        case 'result':
        case 'error': {
          const stream = streams.get(reply.id);
          if (reply.t === 'error' && stream) {
            streams.delete(reply.id);
            return void stream.destroy(fromWire(reply.error));
          }
          const call = calls.get(reply.id);
          calls.delete(reply.id);
          if (reply.t === 'result') call?.resolve(reply.value);
          else call?.reject(fromWire(reply.error));
          return;
        }
      }
    });
    worker.once('error', reject);
  });
  // The store is part of this process: when its thread dies, the process goes with it.
  worker.on('error', (error) => {
    if (!ready) return; // failed to open: openStoreThread rejects
    log.fatal({ err: error }, 'the store thread failed; exiting');
    process.exit(1);
  });
  worker.on('exit', (code) => {
    const wasReady = ready;
    ready = false;
    for (const pending of calls.values()) pending.reject(new Error('sqlite store is closed'));
    calls.clear();
    for (const stream of streams.values()) stream.destroy(new Error('sqlite store is closed'));
    streams.clear();
    if (closing || !wasReady) return;
    log.fatal({ code }, 'the store thread exited; exiting');
    process.exit(1);
  });
  await opened;

  const call = (method: string, args: unknown[], transfer?: ArrayBuffer[]) =>
    new Promise<unknown>((resolve, reject) => {
      if (closing && method !== 'close') return reject(new Error('sqlite store is closed'));
      const id = ++nextId;
      calls.set(id, { resolve, reject });
      post({ t: 'call', id, method, args }, transfer);
    });

  const store: Record<string, unknown> = {
    ready: () => ready,
    spareBytes: () => spare ?? 0,
    put: (mail: ReceivedMail, routes: Record<string, string>) => {
      const { buffer, byteOffset, byteLength } = mail.body;
      const move = byteLength >= MOVE_BODY_FROM && buffer instanceof ArrayBuffer && (owned.has(buffer) || (byteOffset === 0 && buffer.byteLength === byteLength));
      return call('put', [mail, routes], move ? [buffer] : undefined);
    },
    async close() {
      if (closing) return;
      closing = true;
      ready = false;
      await call('close', []).catch(() => {}); // a thread already gone has nothing left to close
      await worker.terminate();
    },
  };
  for (const method of FORWARDED) store[method] ??= (...args: unknown[]) => call(method, args);
  return store as unknown as Store;
}
