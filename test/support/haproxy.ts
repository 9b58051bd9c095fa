import { Buffer } from 'node:buffer';
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { parseIP } from '../../shared/src/rules/ip.ts';
import { waitFor } from './util.ts';

/** The HAProxy on the PATH (Debian package `haproxy`), or null when there is none. */
export function haproxyVersion(): string | null {
  const result = spawnSync('haproxy', ['-v'], { encoding: 'utf8' });
  if (result.error || result.status !== 0) return null;
  return /HAProxy version (\S+)/.exec(result.stdout)?.[1] ?? null;
}

/**
 * A real HAProxy in the foreground (`-db`) with the configuration the test writes, its output in
 * DIR/haproxy.log. Resolves once every port in `ports` accepts connections.
 */
export async function startHaproxy(config: string, dir: string, ports: number[]) {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'haproxy.cfg');
  writeFileSync(file, config);
  const check = spawnSync('haproxy', ['-c', '-f', file], { encoding: 'utf8' });
  if (check.status !== 0) throw new Error(`haproxy -c refused the test's configuration:\n${check.stdout}${check.stderr}`);
  const log = createWriteStream(join(dir, 'haproxy.log'), { flags: 'a' });
  const child = spawn('haproxy', ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.pipe(log, { end: false });
  child.stderr.pipe(log, { end: false });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  for (const port of ports) {
    await waitFor(`haproxy listening on ${port}`, () => {
      if (child.exitCode !== null) throw new Error(`haproxy exited with ${child.exitCode}`);
      return new Promise<boolean>((resolve) => {
        const socket = connect({ port, host: '127.0.0.1' }, () => {
          socket.destroy();
          resolve(true);
        });
        socket.on('error', () => resolve(false));
      });
    }, 10_000, 100);
  }
  return {
    async stop(): Promise<void> {
      if (child.exitCode === null && child.signalCode === null && child.pid) process.kill(child.pid, 'SIGTERM');
      await exited;
    },
  };
}

/** The 12 bytes every PROXY v2 header begins with. */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

/**
 * A PROXY v2 header built byte by byte from the specification (HAProxy's proxy-protocol.txt 2.2),
 * for what a balancer cannot be made to send: any source address, LOCAL, TLVs, broken ones.
 */
export function v2Header(options: { command?: 'local' | 'proxy'; source?: string; destination?: string; sourcePort?: number; destinationPort?: number; familyByte?: number; tlvs?: Buffer; length?: number } = {}): Buffer {
  const source = parseIP(options.source ?? '192.0.2.1') ?? [];
  const destination = parseIP(options.destination ?? (source.length === 16 ? '2001:db8::25' : '198.51.100.25')) ?? [];
  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(options.sourcePort ?? 40_000, 0);
  ports.writeUInt16BE(options.destinationPort ?? 25, 2);
  const body = Buffer.concat([Buffer.from(source), Buffer.from(destination), ports, options.tlvs ?? Buffer.alloc(0)]);
  const fixed = Buffer.alloc(4);
  fixed[0] = options.command === 'local' ? 0x20 : 0x21;
  fixed[1] = options.familyByte ?? (source.length === 16 ? 0x21 : 0x11);
  fixed.writeUInt16BE(options.length ?? body.length, 2);
  return Buffer.concat([V2_SIGNATURE, fixed, body]);
}

/** One TLV (type, 16-bit length, value). */
export function tlv(type: number, value: Buffer | string): Buffer {
  const data = Buffer.from(value);
  const head = Buffer.alloc(3);
  head[0] = type;
  head.writeUInt16BE(data.length, 1);
  return Buffer.concat([head, data]);
}
