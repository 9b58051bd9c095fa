import { Buffer } from 'node:buffer';
import type { Socket } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { formatIP, inRanges, parseIP, type Cidr } from '@backupmx/shared/rules/ip.ts';
import { parseProxyHeader, type ProxyHeader } from '@backupmx/shared/rules/proxy-header.ts';
import { randomBits40 } from '@backupmx/shared/rules/queue-id.ts';

/**
 * PROXY protocol (v1 and v2) from trusted load balancers (PROXY_FROM), in smtp-server's own hook.
 *
 * smtp-server's `useProxy` reads v1 only (a text line), trusts listed addresses but no ranges,
 * answers a bad header with an IMAP-style `* BAD` line, and gives a balancer that sends nothing
 * the whole command timeout. What it does well is kept: a socket from a trusted peer is held
 * back from the SMTP session until its header is read (no greeting before), guarded by the
 * library (destroyed when the server closes), and the header's source address becomes the
 * session's `remoteAddress` (normalised, IPv4-mapped IPv6 as IPv4), which everything else reads.
 * What is ours: the trust test (addresses and CIDR ranges), the reading of the header (v1 and
 * v2, LOCAL and UNKNOWN, IPv4 and IPv6 sources, TLVs skipped; shared/src/rules/proxy-header.ts),
 * a time limit of its own (PROXY_TIMEOUT), and closing a connection without a valid header
 * silently, with the reason reported. Active only for a server with the option `proxyProtocol`.
 */
export interface ProxyProtocolOptions {
  /** Does a connection from this peer address have to begin with a PROXY header? */
  trusted(address: string): boolean;
  /** How long a trusted peer has to send the whole header. */
  timeoutMs: number;
  /** A header was read: `header.source` is the client (null: the balancer's own connection). */
  accepted(balancer: string, header: AcceptedHeader): void;
  /** The connection was closed without a session: why, and the details for the log. */
  refused(balancer: string, reason: ProxyRefusal, detail: string): void;
}

export type AcceptedHeader = Extract<ProxyHeader, { status: 'ok' }>;

/** empty: closed before sending a byte (a balancer's TCP health check); truncated: closed mid-header. */
export type ProxyRefusal = 'invalid' | 'timeout' | 'truncated' | 'empty';

/** Trust test for PROXY_FROM. */
export function trustedPeers(ranges: readonly Cidr[]): (address: string) => boolean {
  return (address) => ranges.length > 0 && inRanges(address, ranges);
}

/** A peer address as we show it: IPv4-mapped IPv6 as plain IPv4. */
export function plainAddress(address: string | undefined): string {
  const bytes = parseIP(address ?? '');
  return bytes ? formatIP(bytes) : (address ?? '');
}

interface SocketOptions {
  remoteAddress?: string;
  remotePort?: number;
  id?: string;
  ignore?: boolean;
}
type Done = (error: Error | null, options?: SocketOptions) => void;

/** Read the header from a trusted peer's socket; on success, what follows it stays unread for SMTP. */
export function readProxyHeader(socket: Socket, proxy: ProxyProtocolOptions, done: Done): void {
  const balancer = plainAddress(socket.remoteAddress);
  let received: Buffer = Buffer.alloc(0);
  let finished = false;
  const finish = (error: Error | null, options?: SocketOptions) => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    socket.removeListener('readable', onReadable);
    socket.removeListener('end', onClosed);
    socket.removeListener('close', onClosed);
    socket.removeListener('error', onError);
    if (error) {
      socket.on('error', () => {}); // a late EPIPE/ECONNRESET must not be an uncaught error
      socket.destroy();
    }
    done(error, options);
  };
  const refuse = (reason: ProxyRefusal, detail: string) => {
    proxy.refused(balancer, reason, detail);
    finish(new Error(`no valid PROXY header from ${balancer}: ${detail}`));
  };
  const started = () => `after ${received.length} byte${received.length === 1 ? '' : 's'} of a ${received[0] === 0x0d ? 'v2' : 'v1'} header`;
  const onReadable = () => {
    let chunk: Buffer | null;
    while ((chunk = socket.read() as Buffer | null) !== null) {
      received = received.length ? Buffer.concat([received, chunk]) : chunk;
      const header = parseProxyHeader(received);
      if (header.status === 'incomplete') continue;
      if (header.status === 'invalid') return refuse('invalid', header.reason);
      const rest = received.subarray(header.length);
      if (rest.length) socket.unshift(rest);
      proxy.accepted(balancer, header);
      return finish(null, header.source ? { remoteAddress: header.source.address, remotePort: header.source.port } : {});
    }
  };
  const onClosed = () => (received.length ? refuse('truncated', `connection closed ${started()}`) : refuse('empty', 'connection closed before a header'));
  const onError = (error: Error) => refuse(received.length ? 'truncated' : 'empty', `connection failed (${error.message}) ${received.length ? started() : 'before a header'}`);
  const timer = setTimeout(
    () => refuse('timeout', `no complete header within ${proxy.timeoutMs} ms${received.length ? ` (${started()})` : ' (nothing sent)'}`),
    proxy.timeoutMs,
  );
  timer.unref();
  socket.on('readable', onReadable);
  socket.on('end', onClosed);
  socket.on('close', onClosed);
  socket.on('error', onError);
}

interface ServerInternals {
  options: { proxyProtocol?: ProxyProtocolOptions; ignoredHosts?: string[] };
  _expectsProxyHeader(socket: Socket): boolean;
  _handleProxy(socket: Socket, callback: Done): void;
}
const server = SMTPServer.prototype as unknown as ServerInternals;
const expectsProxyHeader = server._expectsProxyHeader;
server._expectsProxyHeader = function (this: ServerInternals, socket) {
  const proxy = this.options.proxyProtocol;
  return proxy ? proxy.trusted(socket.remoteAddress ?? '') : expectsProxyHeader.call(this, socket);
};
/**
 * smtp-server's session id (80 random bits as 16 base-32 digits, the library's format), from the
 * pooled random bytes of the queue ids: the library asks the system for 10 bytes per connection.
 */
export function sessionId(): string {
  return randomBits40().toString(32).padStart(8, '0') + randomBits40().toString(32).padStart(8, '0');
}

const handleProxy = server._handleProxy;
server._handleProxy = function (this: ServerInternals, socket, callback) {
  const proxy = this.options.proxyProtocol;
  if (proxy && proxy.trusted(socket.remoteAddress ?? '')) {
    return readProxyHeader(socket, proxy, (error, options) => callback(error, options && { id: sessionId(), ...options }));
  }
  // The library's useProxy, which we do not use.
  if (this._expectsProxyHeader(socket)) return handleProxy.call(this, socket, callback);
  // Any other peer as the library takes it: no header expected, a PROXY line is an unknown command.
  const ignore = Boolean(this.options.ignoredHosts?.includes(socket.remoteAddress ?? ''));
  setImmediate(() => callback(null, { id: sessionId(), ignore }));
};
