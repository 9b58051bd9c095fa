/**
 * The store thread (store-thread.ts): the SQLite store, serving the main thread's calls. Started by
 * openStoreThread through store-worker.mjs; not an entry point of its own. It loads only the store:
 * its log lines go to the main thread's logger, and it keeps out of the configuration (zod) and
 * pino, which would cost this thread tens of MiB.
 */
import { Buffer } from 'node:buffer';
import type { Readable } from 'node:stream';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type { Logger } from '../runtime/logger.ts';
import { bodyReleased, startBufferCollector } from '../runtime/young-gc.ts';
import type { ReceivedMail } from '../types.ts';
import { sqliteOpenFailure } from './schema-version.ts';
import { openSqliteStore } from './sqlite-store.ts';
import type { Reply, Request, WireError } from './store-thread.ts';
import type { Store } from './store.ts';

const STATE_EVERY_MS = 500;
const port = parentPort as MessagePort;
const { path } = workerData as { path: string };
const send = (reply: Reply, transfer?: ArrayBuffer[]) => port.postMessage(reply, transfer);
startBufferCollector();

function toWire(error: unknown, config = false): WireError {
  const e = (error instanceof Error ? error : new Error(String(error))) as Error & Record<string, unknown>;
  return { name: e.name, message: e.message, code: e.code, errcode: e.errcode, errstr: e.errstr, config };
}

/** The store's few log lines, logged by the main thread. */
const log = Object.fromEntries(
  (['fatal', 'error', 'warn', 'info', 'debug', 'trace'] as const).map((level) => [
    level,
    (fields: Record<string, unknown>, message?: string) => {
      const { err, ...rest } = fields;
      send({ t: 'log', level, fields: err === undefined ? rest : { ...rest, err: toWire(err) }, message: message ?? '' });
    },
  ]),
) as unknown as Logger;

/**
 * The store, or null when the file cannot be opened (a newer or foreign file, or one SQLite refuses):
 * then the main thread is told in one line naming DATA_DIR (exit 78), and this thread ends.
 */
async function open(): Promise<Store | null> {
  try {
    return await openSqliteStore(path, { log });
  } catch (error) {
    send({ t: 'fail', error: toWire(new Error(sqliteOpenFailure(path, error)), true) });
    return null; // nothing listens on the port: the thread ends by itself
  }
}

function serve(store: Store): void {
  const state = () => send({ t: 'state', ready: store.ready(), spare: store.spareBytes?.() ?? null });
  const timer = setInterval(state, STATE_EVERY_MS);
  timer.unref();

  /**
   * Bodies being read: each is sent a chunk at a time as the main thread asks, one chunk read ahead
   * so that the last chunk goes with the news that it is the last (a body kept in one row: one message).
   */
  const streams = new Map<number, { chunks: AsyncIterator<Uint8Array>; ahead: IteratorResult<Uint8Array> }>();

  async function next(id: number, kind: 'stream' | 'chunk'): Promise<void> {
    const body = streams.get(id);
    if (!body) return;
    try {
      const current = body.ahead;
      if (current.done) {
        streams.delete(id);
        return send({ t: kind, id, chunk: null, end: true });
      }
      body.ahead = await body.chunks.next();
      if (body.ahead.done) streams.delete(id);
      const chunk = current.value;
      // A chunk that is a whole buffer of its own moves to the main thread; any other is copied.
      const whole = chunk.byteOffset === 0 && chunk.buffer instanceof ArrayBuffer && chunk.byteLength === chunk.buffer.byteLength;
      send({ t: kind, id, chunk, end: Boolean(body.ahead.done) }, whole ? [chunk.buffer as ArrayBuffer] : undefined);
    } catch (error) {
      streams.delete(id);
      send({ t: 'error', id, error: toWire(error) });
    }
  }

  async function call(id: number, method: string, args: unknown[]): Promise<void> {
    try {
      if (method === 'close') {
        clearInterval(timer);
        await store.close();
        return send({ t: 'result', id, value: undefined }); // the main thread then ends this thread
      }
      let moved = 0;
      if (method === 'put') {
        const mail = args[0] as ReceivedMail;
        const body = mail.body as Uint8Array;
        moved = body.byteLength;
        args[0] = { ...mail, body: Buffer.from(body.buffer, body.byteOffset, body.byteLength) };
      }
      const value = await (store as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[method]!(...args).finally(() => {
        // A large body that came here: written or not, it is garbage now. Free it now, not when
        // this thread's heap next fills (it hardly allocates, so that could take long).
        bodyReleased(moved);
      });
      if (method !== 'readBody') return send({ t: 'result', id, value });
      const chunks = (value as Readable)[Symbol.asyncIterator]() as AsyncIterator<Uint8Array>;
      streams.set(id, { chunks, ahead: await chunks.next() });
      await next(id, 'stream');
    } catch (error) {
      streams.delete(id);
      send({ t: 'error', id, error: toWire(error) });
    }
  }

  port.on('message', (request: Request) => {
    if (request.t === 'call') void call(request.id, request.method, request.args);
    else if (request.t === 'pull') void next(request.id, 'chunk');
    else {
      const body = streams.get(request.id);
      streams.delete(request.id);
      void body?.chunks.return?.();
    }
  });
  send({ t: 'open' });
    state();
}

const store = await open();
if (store) serve(store);
