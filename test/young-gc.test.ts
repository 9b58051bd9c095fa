import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT, spawnModule } from './support/processes.ts';
import { tempDir } from './support/util.ts';

/**
 * A large body that lived long enough to be promoted (ingress holds it until it is stored, the spool
 * until it is acknowledged) is freed only by a full collection; bodyReleased() runs one. Each case
 * runs in a process of its own, with the buffer collector started as the services start it.
 */
const MiB = 1024 * 1024;

function run(release: boolean): Promise<{ held: number; after: number }> {
  return inChild(`
    import { Buffer } from 'node:buffer';
    import { setFlagsFromString } from 'node:v8';
    import { runInNewContext } from 'node:vm';
    import { setTimeout as sleep } from 'node:timers/promises';
    import { bodyReleased, startBufferCollector } from ${JSON.stringify(join(ROOT, 'shared', 'src', 'runtime', 'young-gc.ts'))};
    startBufferCollector();
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc');
    let body = Buffer.alloc(${24 * MiB}, 1);
    gc({ type: 'minor' });
    gc({ type: 'minor' }); // promoted, as a body held while it is stored
    await sleep(100);
    const held = process.memoryUsage().arrayBuffers;
    body = null;
    ${release ? `bodyReleased(${24 * MiB});` : ''}
    await sleep(300);
    process.stdout.write(JSON.stringify({ held, after: process.memoryUsage().arrayBuffers }));
    process.exit(0);
  `);
}

/**
 * 24 MiB arriving in 64 KiB reads, each copied once (as smtp-server copies a socket's reads) and let
 * go, in one stretch of the event loop, as on loopback: the most buffer memory alive at any moment
 * beyond what the process started with. With `report`, every copy is reported to passedThrough().
 */
function busyStretch(report: boolean): Promise<{ most: number }> {
  return inChild(`
    import { Buffer } from 'node:buffer';
    import { passedThrough, startBufferCollector } from ${JSON.stringify(join(ROOT, 'shared', 'src', 'runtime', 'young-gc.ts'))};
    startBufferCollector();
    const start = process.memoryUsage().arrayBuffers;
    let most = 0;
    for (let i = 0; i < ${(24 * MiB) / (64 * 1024)}; i++) {
      const read = Buffer.allocUnsafe(${64 * 1024});
      Buffer.concat([read.subarray(0, 4), read]);
      ${report ? `passedThrough(read.length);` : ''}
      most = Math.max(most, process.memoryUsage().arrayBuffers - start);
    }
    process.stdout.write(JSON.stringify({ most }));
    process.exit(0);
  `);
}

function inChild<T>(source: string): Promise<T> {
  const dir = tempDir();
  return new Promise((resolve, reject) => {
    const child = spawnModule(source, dir.path, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      dir.remove();
      if (code !== 0) return reject(new Error(`child exited with ${code}: ${out}`));
      resolve(JSON.parse(out) as T);
    });
  });
}

// Deno's process.memoryUsage() does not count array buffers (0): the collector does nothing there.
const kept = Buffer.alloc(MiB);
const counted = process.memoryUsage().arrayBuffers >= kept.length;

describe('buffer collector: a large body let go is freed at once', { skip: counted ? false : "this runtime's process.memoryUsage() does not count array buffers" }, () => {
  it('bodyReleased() frees a promoted 24 MiB body within a moment', async () => {
    const { held, after } = await run(true);
    assert.ok(held >= 24 * MiB, `held ${held} bytes while the body was alive`);
    assert.ok(after < 4 * MiB, `${after} bytes of buffers left after bodyReleased()`);
  });

  it('without it the body stays: V8 does not collect for buffer memory alone', async () => {
    const { after } = await run(false);
    assert.ok(after >= 24 * MiB, `${after} bytes of buffers left`);
  });

  it('passedThrough() keeps the buffers a busy stretch leaves behind to a few MiB', async () => {
    const { most } = await busyStretch(true);
    assert.ok(most < 12 * MiB, `${most} bytes of buffers alive at once`);
  });

  it('without it they pile up: the timer does not run within the stretch, V8 does not collect for them', async () => {
    const { most } = await busyStretch(false);
    assert.ok(most >= 40 * MiB, `${most} bytes of buffers alive at once`);
  });
});
