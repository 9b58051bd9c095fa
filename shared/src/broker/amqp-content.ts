import { Buffer } from 'node:buffer';
import { createRequire } from 'node:module';
import type { Writable } from 'node:stream';
import { passedThrough } from '../runtime/young-gc.ts';

/** The frames amqplib's channels take in (lib/channel.js): a content header announces the body's size, content frames carry it. */
interface Frame {
  id?: number;
  size?: number;
  content?: Buffer;
}
type Assembly = { size: number; body: Buffer | null; filled: number };
/** What amqplib's Connection (lib/connection.js) does with a channel's outgoing frames. */
interface ConnectionPrototype {
  channels: Array<{ buffer: Writable } | null>;
  frameMax: number;
  sentSinceLastCheck: boolean;
  sendMethod(this: ConnectionPrototype, channel: number, ...rest: unknown[]): boolean;
  sendMessage(this: ConnectionPrototype, channel: number, ...rest: unknown[]): boolean;
  sendContent(this: ConnectionPrototype, channel: number, body: Buffer): boolean;
  [WAITING]?: Map<number, Array<() => void>>;
}
const WAITING = Symbol('backupmx.amqpFramesWaiting');
interface ChannelPrototype {
  acceptMessageFrame(this: ChannelPrototype, frame: Frame): void;
  [ASSEMBLY]?: Assembly | null;
}
const ASSEMBLY = Symbol('backupmx.amqpContentAssembly');

/**
 * Outgoing frames a channel may hold before a body's next frames wait for the socket to take some
 * (a Writable's high-water mark, in frames of 128 KiB). amqplib's default is 1,024: a 25 MB body
 * was copied into frames whole at publish, held beside ingress's own copy. The channel's buffer is
 * a PassThrough, which holds that many on each of its sides: with 16, 4 MiB of frames waited there
 * at the peak of ingress's RSS; with 4, `npm run bench:large` ingress one message 1.71-1.82x ->
 * 1.21-1.29x of its size.
 */
export const CHANNEL_FRAMES = 4;

let installed = false;

/** Both directions: bodies received into one buffer, bodies sent framed as the socket takes them. */
export function boundContentCopies(): void {
  if (installed) return;
  installed = true;
  const require = createRequire(import.meta.url);
  assembleContentInPlace(require);
  frameContentLazily(require);
}

/**
 * amqplib keeps each content frame of a message it receives (a slice of its joins of the socket's
 * reads) and joins them all once the last one came: a 25 MB message was held about three times over
 * in the spool (issue 9, part 3). This makes every channel copy the frames, as they come, into one
 * buffer of the size the content header announced, and hand amqplib one content frame holding it
 * all, which it takes as the message's content as it is. The frames are young garbage at once
 * (runtime/young-gc.ts frees them). A body in one frame is amqplib's slice, as before.
 */
function assembleContentInPlace(require: NodeJS.Require): void {
  const { Channel } = require('amqplib/lib/channel.js') as { Channel: { prototype: ChannelPrototype } };
  const { BasicProperties } = require('amqplib/lib/defs.js') as { BasicProperties: number };
  const accept = Channel.prototype.acceptMessageFrame;
  if (typeof accept !== 'function' || typeof BasicProperties !== 'number') throw new Error('amqplib changed: no Channel.prototype.acceptMessageFrame or BasicProperties (shared/src/broker/amqp-content.ts)');
  Channel.prototype.acceptMessageFrame = function (this: ChannelPrototype, frame: Frame) {
    if (frame.id === BasicProperties) {
      this[ASSEMBLY] = frame.size ? { size: frame.size, body: null, filled: 0 } : null;
      return accept.call(this, frame);
    }
    const assembly = this[ASSEMBLY];
    const content = frame.id === undefined ? frame.content : undefined;
    if (!assembly || !content) return accept.call(this, frame);
    if (assembly.filled + content.length > assembly.size) {
      // More than announced: amqplib sees all of it and refuses it, as it does.
      this[ASSEMBLY] = null;
      return accept.call(this, { content: assembly.body ? Buffer.concat([assembly.body.subarray(0, assembly.filled), content]) : content });
    }
    if (!assembly.body) {
      if (content.length === assembly.size) {
        this[ASSEMBLY] = null;
        return accept.call(this, frame);
      }
      assembly.body = Buffer.allocUnsafe(assembly.size);
    }
    content.copy(assembly.body, assembly.filled);
    assembly.filled += content.length;
    passedThrough(content.length); // the frame, and the socket's reads it was cut from, are garbage now
    if (assembly.filled < assembly.size) return;
    this[ASSEMBLY] = null;
    return accept.call(this, { content: assembly.body });
  };
}

/**
 * amqplib frames a body it sends all at once, copying it into frames that wait in the channel's
 * buffer (up to its high-water mark of frames, CHANNEL_FRAMES for our publisher) until the socket
 * takes them. This writes a body's frames while the channel's buffer takes them and the rest when
 * it drains, so a large body is held once (by its sender) plus a few frames. Whatever the channel
 * sends meanwhile (another publish, a method) waits behind it, in order: AMQP allows nothing else on
 * a channel between a body's frames. Bodies of one frame are written at once, as before.
 */
function frameContentLazily(require: NodeJS.Require): void {
  const { Connection } = require('amqplib/lib/connection.js') as { Connection: { prototype: ConnectionPrototype } };
  const { makeBodyFrame } = require('amqplib/lib/frame.js') as { makeBodyFrame: (channel: number, payload: Buffer) => Buffer };
  const { FRAME_OVERHEAD } = require('amqplib/lib/defs.js') as { FRAME_OVERHEAD: number };
  const { sendMethod, sendMessage, sendContent } = Connection.prototype;
  if (typeof sendMethod !== 'function' || typeof sendMessage !== 'function' || typeof sendContent !== 'function' || typeof makeBodyFrame !== 'function' || typeof FRAME_OVERHEAD !== 'number') {
    throw new Error('amqplib changed: no Connection.prototype.sendMethod / sendMessage / sendContent or makeBodyFrame (shared/src/broker/amqp-content.ts)');
  }
  const waiting = (connection: ConnectionPrototype) => (connection[WAITING] ??= new Map());
  /** Run `send` now, or after the body being framed on this channel. */
  const inTurn =
    (send: (this: ConnectionPrototype, channel: number, ...rest: unknown[]) => boolean) =>
    function (this: ConnectionPrototype, channel: number, ...rest: unknown[]): boolean {
      const queue = this[WAITING]?.get(channel);
      if (!queue) return send.call(this, channel, ...rest);
      queue.push(() => void send.call(this, channel, ...rest));
      return false;
    };
  Connection.prototype.sendMethod = inTurn(sendMethod);
  Connection.prototype.sendMessage = inTurn(sendMessage);
  Connection.prototype.sendContent = function (this: ConnectionPrototype, channel: number, body: Buffer): boolean {
    const buffer = this.channels[channel]?.buffer;
    const maxBody = this.frameMax - FRAME_OVERHEAD;
    if (!buffer || body.length <= maxBody) return sendContent.call(this, channel, body);
    const queues = waiting(this);
    const queue: Array<() => void> = [];
    queues.set(channel, queue);
    let offset = 0;
    const pump = () => {
      // A channel closed meanwhile takes nothing more (its buffer is ended); what waited is dropped with it.
      if (buffer.writableEnded || buffer.destroyed) return void queues.delete(channel);
      this.sentSinceLastCheck = true;
      while (offset < body.length) {
        const more = buffer.write(makeBodyFrame(channel, body.subarray(offset, offset + maxBody)));
        offset += maxBody;
        passedThrough(maxBody); // a frame: garbage once the socket took it
        if (!more && offset < body.length) return void buffer.once('drain', pump);
      }
      queues.delete(channel);
      // What waited goes out in order; a publish among it may start another body, behind which the rest waits.
      while (queue.length > 0) {
        (queue.shift() as () => void)();
        const next = queues.get(channel);
        if (next) return void next.push(...queue.splice(0));
      }
    };
    pump();
    return false;
  };
}
