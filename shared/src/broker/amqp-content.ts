import { Buffer } from 'node:buffer';
import { createRequire } from 'node:module';

/** The frames amqplib's channels take in (lib/channel.js): a content header announces the body's size, content frames carry it. */
interface Frame {
  id?: number;
  size?: number;
  content?: Buffer;
}
type Assembly = { size: number; body: Buffer | null; filled: number };
interface ChannelPrototype {
  acceptMessageFrame(this: ChannelPrototype, frame: Frame): void;
  [ASSEMBLY]?: Assembly | null;
}
const ASSEMBLY = Symbol('backupmx.amqpContentAssembly');

let installed = false;

/**
 * amqplib keeps each content frame of a message it receives (a slice of its joins of the socket's
 * reads) and joins them all once the last one came: a 25 MB message was held about three times over
 * in the spool (issue 9, part 3). This makes every channel copy the frames, as they come, into one
 * buffer of the size the content header announced, and hand amqplib one content frame holding it
 * all, which it takes as the message's content as it is. The frames are young garbage at once
 * (runtime/young-gc.ts frees them). A body in one frame is amqplib's slice, as before. Idempotent.
 */
export function assembleContentInPlace(): void {
  if (installed) return;
  installed = true;
  const require = createRequire(import.meta.url);
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
    if (assembly.filled < assembly.size) return;
    this[ASSEMBLY] = null;
    return accept.call(this, { content: assembly.body });
  };
}
