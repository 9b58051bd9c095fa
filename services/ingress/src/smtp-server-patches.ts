import { SMTPConnection } from 'smtp-server/lib/smtp-connection.js';

/**
 * Two small, documented changes to smtp-server's connection, made once at import.
 *
 * 1. Enhanced status codes. smtp-server picks the enhanced code of an error reply from the reply
 *    code alone (550 is always 5.1.1), so a relay refusal (550 5.7.1) and an unknown user
 *    (550 5.1.1) could not be told apart. Our replies carry their own enhanced code at the start of
 *    the text (see replyError); for those, the library adds none. Other replies keep its code.
 *
 * 2. The greeting delay. smtp-server waits a fixed 100 ms before the 220 greeting to catch clients
 *    that talk first; with one message per connection that caps a session at 10 messages a second.
 *    The server option `greetingDelay` (ms, GREETING_DELAY) sets it; the rest of init() is the
 *    library's own (connection limit, then the delayed greeting).
 */
interface Connection {
  _server: { options: { maxClients?: number; greetingDelay?: number }; connections: Set<unknown> };
  name: string;
  _setListeners(done: () => void): void;
  connectionReady(): void;
  send(code: number, data: unknown, context?: unknown): void;
}
const prototype = (SMTPConnection as unknown as { prototype: Connection & { init(): void } }).prototype;

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3} /;
const send = prototype.send;
prototype.send = function (this: Connection, code, data, context) {
  return send.call(this, code, data, typeof data === 'string' && ENHANCED.test(data) ? false : context);
};

prototype.init = function (this: Connection) {
  this._setListeners(() => {
    const { maxClients, greetingDelay = 100 } = this._server.options;
    if (maxClients && this._server.connections.size > maxClients) {
      return this.send(421, `${this.name} Too many connected clients, try again in a moment`, false);
    }
    setTimeout(() => this.connectionReady(), greetingDelay).unref();
  });
};
