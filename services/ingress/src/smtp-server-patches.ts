import { Buffer, isUtf8 } from 'node:buffer';
import type { Socket } from 'node:net';
import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';

/**
 * Small, documented changes to smtp-server's connection and command parser, made once at import.
 * Each one is driven by a server option (read from `_server.options`), so a server without the
 * option behaves as the library does.
 *
 * 1. Enhanced status codes. smtp-server picks the enhanced code of an error reply from the reply
 *    code alone (550 is always 5.1.1), so a relay refusal (550 5.7.1) and an unknown user
 *    (550 5.1.1) could not be told apart. Our replies carry their own enhanced code at the start of
 *    the text (see replyError); for those, the library adds none. A few of the library's own
 *    replies get a better code (libraryStatus). Other replies keep its code.
 *
 * 2. The greeting delay. smtp-server waits a fixed 100 ms before the 220 greeting to catch clients
 *    that talk first; with one message per connection that caps a session at 10 messages a second.
 *    The server option `greetingDelay` (ms, GREETING_DELAY) sets it.
 *
 * 3. Overlong command lines (option `maxCommandLength`). The library answers a line over the limit
 *    with 421 and drops the connection; RFC 5321 4.5.3.1.10 answers "500 Line too long". Here the
 *    rest of such a line is discarded up to its end, the client gets `500 5.5.2`, and the session
 *    goes on (as Postfix does).
 *
 * 4. Non-ASCII addresses without SMTPUTF8 (RFC 6531 3.7.4.1): `553 5.6.7` at MAIL or RCPT; with
 *    SMTPUTF8, bytes that are not UTF-8 are a syntax error (501). The library accepts both.
 *
 * 5. Separate idle limits while waiting for a command (`socketTimeout`) and for message data
 *    (`dataTimeout`), RFC 5321 4.5.3.2.
 *
 * 6. An error limit (`maxErrors`, Postfix smtpd_hard_error_limit): after that many 4xx/5xx replies
 *    in one session, `421 4.7.0` and close. "Too many recipients" (452 4.5.3) does not count: a
 *    client that sends more recipients than we take must get its message through.
 *
 * 7. Refusals the library (or these patches) give at MAIL, RCPT and DATA without asking our
 *    handlers (a declared SIZE over the limit, address syntax, command sequence, non-ASCII
 *    addresses) are reported to the server option `onLibraryRefusal` (for the metrics); refusals
 *    our handlers give are counted where they are made (smtp-metrics.ts).
 *
 * 8. Address forms the library's parser refuses as syntax (501) that Postfix treats otherwise:
 *    one trailing dot on the domain (`user@example.com.`) is dropped before parsing, and at RCPT a
 *    quoted local part hiding another mailbox (`"user@elsewhere"@example.com`) is refused as
 *    sender-specified routing, `550 5.7.1`, like the percent hack (relay-policy.ts).
 *
 * 9. Closing after QUIT (option `closeAfterQuit`): once the 221 is out, the connection is closed,
 *    as Postfix's smtpd does, instead of reading on until the client's FIN. Many clients (Postfix's
 *    smtp-source among them) reset the connection after the 221, and reading that reset cost an
 *    error object with its stack trace and an error event per connection.
 */
interface Parser {
  _dataMode: boolean;
  _maxCommandLength: number;
  _remainder: string;
  isClosed: boolean;
  _write(chunk: Buffer, encoding: BufferEncoding, next: (error?: Error | null) => void): void;
  /** Bytes of the current, unfinished command line seen so far (ours). */
  _lineSoFar?: number;
  /** The current line is over the limit: drop bytes up to its LF (ours). */
  _discarding?: boolean;
}

interface Options {
  maxClients?: number;
  greetingDelay?: number;
  socketTimeout?: number;
  dataTimeout?: number;
  maxErrors?: number;
  onLibraryRefusal?: (verb: RefusalVerb, code: number, status: string) => void;
  closeAfterQuit?: boolean;
}

export type RefusalVerb = 'MAIL' | 'RCPT' | 'DATA';
const REFUSAL_VERBS = new Set<string>(['MAIL', 'RCPT', 'DATA', 'BDAT']);

interface Connection {
  _server: { options: Options; connections: Set<unknown>; _closeTimeout: unknown };
  _socket: Socket;
  _parser: Parser | false;
  _ready: boolean;
  _upgrading: boolean;
  _closing: boolean;
  session: { envelope?: { smtpUtf8?: boolean } };
  name: string;
  /** Replies of 4xx/5xx in this session (ours). */
  _errorReplies?: number;
  /** The verb of the command being answered (ours). */
  _verb?: string | undefined;
  _getEnhancedStatusCode(code: number, context?: unknown): string;
  _setListeners(done: () => void): void;
  connectionReady(): void;
  send(code: number, data: unknown, context?: unknown): void;
  _onTimeout(): void;
  _armTimeout(socket?: Socket): void;
  _resetSession(): void;
  _onCommand(command: Buffer, callback?: () => void): void;
  handler_MAIL(command: Buffer, callback: () => void): void;
  handler_RCPT(command: Buffer, callback: () => void): void;
  handler_DATA(command: Buffer, callback: () => void): void;
  handler_QUIT(command: Buffer, callback: () => void): void;
}
const prototype = (SMTPConnection as unknown as { prototype: Connection & { init(): void } }).prototype;
const parserPrototype = (SMTPStream as unknown as { prototype: Parser }).prototype;

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;

/** Better enhanced codes for some of the library's own replies (RFC 3463). */
export function libraryStatus(code: number, text: string): string | null {
  if (code !== 421) return null;
  if (/You talk too soon|too many unrecognized commands|HTTP requests not allowed/.test(text)) return '4.7.0';
  if (/^Server shutting down/.test(text)) return '4.3.2';
  if (/^Timeout/.test(text)) return '4.4.2';
  return null;
}

/** Replies that count towards the error limit. */
export function countsAsError(code: number, text: string): boolean {
  return code >= 400 && code !== 421 && !(code === 452 && text.startsWith('4.5.3 '));
}

/** Tell `onLibraryRefusal` about a refusal of MAIL, RCPT or DATA (BDAT counts as DATA). */
function reportRefusal(connection: Connection, code: number, status: string): void {
  const verb = connection._verb;
  const report = connection._server.options.onLibraryRefusal;
  if (!report || code < 400 || code === 421 || !verb || !REFUSAL_VERBS.has(verb)) return;
  // Only replies that reach the client (not the aftermath of a client that went away mid-DATA).
  if (connection._socket.destroyed || connection._socket.readyState !== 'open') return;
  report(verb === 'BDAT' ? 'DATA' : (verb as RefusalVerb), code, status);
}

const send = prototype.send;
prototype.send = function (this: Connection, code, data, context) {
  // Our handlers' replies (replyError) carry their enhanced code; the library's own do not.
  if (code >= 400 && typeof data === 'string' && !ENHANCED.test(data)) {
    reportRefusal(this, code, context === false ? '' : this._getEnhancedStatusCode(code, context));
  }
  let text = data;
  if (typeof text === 'string' && !ENHANCED.test(text) && context !== false) {
    const status = libraryStatus(code, text);
    if (status) text = `${status} ${text}`;
  }
  const own = typeof text === 'string' && ENHANCED.test(text);
  send.call(this, code, text, own ? false : context);
  const limit = this._server.options.maxErrors;
  if (limit && !this._closing && countsAsError(code, typeof text === 'string' ? text : '')) {
    this._errorReplies = (this._errorReplies ?? 0) + 1;
    if (this._errorReplies >= limit) send.call(this, 421, `4.7.0 ${this.name} Error: too many errors`, false);
  }
};

prototype.init = function (this: Connection) {
  this._setListeners(() => {
    const { maxClients, greetingDelay = 100 } = this._server.options;
    if (maxClients && this._server.connections.size > maxClients) {
      return this.send(421, `4.7.0 ${this.name} Too many connected clients, try again in a moment`, false);
    }
    setTimeout(() => this.connectionReady(), greetingDelay).unref();
  });
};

// 3. Overlong command lines. ------------------------------------------------------------------

/** What the filter below hands the parser in place of an overlong line. */
const TOO_LONG = Buffer.from('\0backupmx: line too long', 'latin1');
const TOO_LONG_LINE = Buffer.concat([TOO_LONG, Buffer.from('\r\n')]);
const DATA_LINE = /^data[ \t]*\r?\n$/i;

const write = parserPrototype._write;
parserPrototype._write = function (this: Parser, chunk, encoding, next) {
  if (this._dataMode || this.isClosed || !chunk || !chunk.length) {
    this._lineSoFar = 0;
    this._discarding = false;
    return write.call(this, chunk, encoding, next);
  }
  const max = this._maxCommandLength;
  let lineSoFar = this._lineSoFar ?? 0;
  let discarding = this._discarding ?? false;
  let changed = false;
  const out: Buffer[] = [];
  let start = 0;
  let passRest = false;
  for (let lf = chunk.indexOf(10); lf !== -1; lf = chunk.indexOf(10, start)) {
    const length = lf - start - (lf > start && chunk[lf - 1] === 13 ? 1 : 0);
    if (discarding || lineSoFar + length > max) {
      // The parser holds the start of this line (what came in earlier chunks): drop it too.
      if (lineSoFar > 0 && !discarding) this._remainder = '';
      out.push(TOO_LONG_LINE);
      changed = true;
      discarding = false;
    } else {
      out.push(chunk.subarray(start, lf + 1));
      // What follows DATA in the same chunk (a client that does not wait for 354) may be the
      // message: not ours to filter. The parser takes it from here.
      passRest = lineSoFar === 0 && DATA_LINE.test(chunk.toString('latin1', start, lf + 1));
    }
    lineSoFar = 0;
    start = lf + 1;
    if (passRest) break;
  }
  if (passRest) {
    this._lineSoFar = 0;
    this._discarding = false;
    return write.call(this, changed ? Buffer.concat([...out, chunk.subarray(start)]) : chunk, encoding, next);
  }
  const tail = chunk.length - start;
  if (discarding) {
    changed = changed || tail > 0;
  } else if (lineSoFar + tail > max) {
    if (lineSoFar > 0) this._remainder = '';
    discarding = true;
    changed = true;
  } else {
    if (changed) out.push(chunk.subarray(start));
    lineSoFar += tail;
  }
  this._lineSoFar = lineSoFar;
  this._discarding = discarding;
  if (!changed) return write.call(this, chunk, encoding, next);
  const filtered = Buffer.concat(out);
  return filtered.length ? write.call(this, filtered, encoding, next) : next();
};

const onCommand = prototype._onCommand;
prototype._onCommand = function (this: Connection, command, callback) {
  this._verb = Buffer.isBuffer(command) ? (/^[A-Za-z]+/.exec(command.toString('latin1', 0, 8))?.[0] ?? '').toUpperCase() : undefined;
  if (this._ready && !this._upgrading && !this._server._closeTimeout && Buffer.isBuffer(command) && command.equals(TOO_LONG)) {
    this.send(500, '5.5.2 Error: line too long');
    setImmediate(() => callback?.());
    return;
  }
  return onCommand.call(this, command, callback);
};

// 4. SMTPUTF8. ----------------------------------------------------------------------------------

/**
 * The reply to a MAIL or RCPT line that holds non-ASCII bytes: without SMTPUTF8 (given on this
 * MAIL line, or on the transaction's MAIL for RCPT) 553 5.6.7; with it, bytes that are not UTF-8
 * are a syntax error. Null when the line is fine in this respect.
 */
export function nonAsciiRefusal(verb: 'MAIL' | 'RCPT', line: Buffer, smtputf8: boolean): SmtpReply | null {
  if (!line.some((byte) => byte >= 0x80)) return null;
  const requested = verb === 'MAIL' ? /\sSMTPUTF8(?=\s|$)/i.test(line.toString('latin1').replace(/^[^>]*>/, '')) : smtputf8;
  if (!requested) return { code: 553, status: '5.6.7', text: 'Error: non-ASCII address without SMTPUTF8' };
  if (!isUtf8(line)) return { code: 501, status: verb === 'MAIL' ? '5.1.7' : '5.1.3', text: 'Error: address is not valid UTF-8' };
  return null;
}

for (const verb of ['MAIL', 'RCPT'] as const) {
  const name = `handler_${verb}` as const;
  const handler = prototype[name];
  prototype[name] = function (this: Connection, command, callback) {
    const refusal = Buffer.isBuffer(command) ? nonAsciiRefusal(verb, command, Boolean(this.session.envelope?.smtpUtf8)) : null;
    if (!refusal) return handler.call(this, command, callback);
    reportRefusal(this, refusal.code, refusal.status);
    this.send(refusal.code, `${refusal.status} ${refusal.text}`);
    callback();
  };
}

// 5. Command and data timeouts. ---------------------------------------------------------------

const timeoutListeners = new WeakMap<Socket, () => void>();
prototype._armTimeout = function (this: Connection, socket: Socket = this._socket) {
  const { socketTimeout = 60_000, dataTimeout } = this._server.options;
  const inData = Boolean(this._parser && this._parser._dataMode);
  if (socket !== this._socket) {
    // STARTTLS: the TLS socket takes over the idle limit from the plain one under it.
    const plain = timeoutListeners.get(this._socket);
    if (plain) this._socket.removeListener('timeout', plain);
    this._socket.setTimeout(0);
  }
  const previous = timeoutListeners.get(socket);
  if (previous) socket.removeListener('timeout', previous);
  const listener = () => this._onTimeout();
  timeoutListeners.set(socket, listener);
  socket.setTimeout(inData && dataTimeout ? dataTimeout : socketTimeout, listener);
};

const handleData = prototype.handler_DATA;
prototype.handler_DATA = function (this: Connection, command, callback) {
  handleData.call(this, command, callback);
  if (this._parser && this._parser._dataMode && !this._socket.destroyed) this._armTimeout();
};

const resetSession = prototype._resetSession;
prototype._resetSession = function (this: Connection) {
  resetSession.call(this);
  if (this._socket && !this._socket.destroyed && !this._closing) this._armTimeout();
};

// 8. Trailing dots and quoted routing. ----------------------------------------------------------

/**
 * A MAIL or RCPT command line with one trailing dot dropped from the address's domain, or the
 * refusal for a quoted local part that holds an '@' (RCPT only). Null when there is nothing to do.
 */
export function addressForm(verb: 'MAIL' | 'RCPT', line: string): { line: string } | { refusal: SmtpReply } | null {
  const match = /^([^<]*<)([^<>]*)(>.*)$/s.exec(line);
  if (!match) return null;
  const [, before = '', address = '', after = ''] = match;
  if (verb === 'RCPT' && /^"[^"]*@[^"]*"@/.test(address.replace(/^@[^:]*:/, ''))) {
    return { refusal: { code: 550, status: '5.7.1', text: `<${address}>: Relay access denied (routing in local part)` } };
  }
  if (/@[^@]*[^.@]\.$/.test(address)) return { line: `${before}${address.slice(0, -1)}${after}` };
  return null;
}

for (const verb of ['MAIL', 'RCPT'] as const) {
  const name = `handler_${verb}` as const;
  const handler = prototype[name];
  prototype[name] = function (this: Connection, command, callback) {
    const form = Buffer.isBuffer(command) ? addressForm(verb, command.toString('latin1')) : null;
    if (!form) return handler.call(this, command, callback);
    if ('line' in form) return handler.call(this, Buffer.from(form.line, 'latin1'), callback);
    reportRefusal(this, form.refusal.code, form.refusal.status);
    this.send(form.refusal.code, `${form.refusal.status} ${form.refusal.text}`);
    callback();
  };
}

// 9. Closing after QUIT. -------------------------------------------------------------------------

const quit = prototype.handler_QUIT;
prototype.handler_QUIT = function (this: Connection, command, callback) {
  quit.call(this, command, callback);
  const socket = this._socket;
  if (!this._server.options.closeAfterQuit || this._upgrading || socket.destroyed) return;
  // The library resumed reading to see the client's FIN; nothing it sends now is read. The 221 and
  // our FIN are handed to the kernel before the descriptor closes ('finish').
  socket.pause();
  if (socket.writableFinished) socket.destroy();
  else socket.once('finish', () => socket.destroy());
};
