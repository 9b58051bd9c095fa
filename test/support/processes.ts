import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { waitFor } from './util.ts';

export const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..');

export const ENTRY = {
  all: 'src/main.ts',
  ingress: 'services/ingress/src/main.ts',
  spool: 'services/spool/src/main.ts',
  health: 'services/health/src/main.ts',
  deliverer: 'services/deliverer/src/main.ts',
} as const;

export interface Service {
  name: string;
  child: ChildProcess;
  httpPort: number;
  exited: Promise<number | null>;
  /** The last few hundred characters it wrote to stderr (why it exited, when it did). */
  stderrTail(): string;
  /** SIGTERM (or another signal) and wait for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Send a signal to a child by its pid. Not `child.kill()`: under Deno 2.9 that leaves `signalCode`
 * set and `exitCode` null even when the child then exits 0, so the exit code would be lost.
 */
export function sendSignal(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): void {
  if (child.pid === undefined) return;
  try {
    process.kill(child.pid, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error; // already gone
  }
}

/**
 * Run ES module source as a child of this runtime (Node or Deno). Written to a `.mjs` file in `dir`
 * rather than passed with `-e --input-type=module`, which Deno runs as a script.
 */
export function spawnModule(source: string, dir: string, options: SpawnOptions = {}): ChildProcess {
  const file = join(dir, `module-${process.pid}-${++modules}.mjs`);
  writeFileSync(file, source);
  return spawn(process.execPath, [file], options);
}
let modules = 0;

/**
 * The V8 flags every way of starting a service passes (package.json's start scripts, deno.json's
 * tasks as --v8-flags, both Dockerfiles): a young generation of 8 MiB semi-spaces instead of V8's
 * 64 MiB under load (issue 9: about 100 MiB of a process's peak RSS), and an old generation let grow
 * to 1.15 times what the last full collection kept instead of V8's dynamic factor of up to 4
 * (`npm run bench`: one process 250 -> 156 MiB peak, the four services 640 -> 520 MiB, the same
 * rates: the live heap is a few tens of MiB, so the extra full collections are cheap). Deno takes them as Node's
 * when it spawns its own executable. test/v8-flags.test.ts checks that all of them agree.
 */
export const V8_FLAGS = ['--max-semi-space-size=8', '--heap-growing-percent=15'] as const;

/**
 * The environment they set too (the scripts and tasks as a prefix, the Dockerfiles as ENV): glibc
 * hands allocations of 128 KiB and more back to the system when they are freed. By default it raises
 * that threshold once such a block is freed, and then keeps the memory of every large buffer the
 * process frees (socket reads, frames, a large message's body): a 25 MB message added about 60 MiB
 * to the spool's RSS that way, 30 MiB with this (issue 9).
 */
export const MALLOC_ENV = { MALLOC_MMAP_THRESHOLD_: '131072' } as const;

/**
 * Start a backupmx entry point as its own process (Node 24, type stripping, V8_FLAGS and MALLOC_ENV, as `npm start` does),
 * with exactly `env` plus PATH; its output goes to LOG_DIR/<name>.log for post-mortems.
 */
export function spawnService(name: string, entry: keyof typeof ENTRY, env: Record<string, string>, logDir: string): Service {
  return spawnCommand(name, [process.execPath, ...V8_FLAGS, join(ROOT, ENTRY[entry])], { ...MALLOC_ENV, ...env }, logDir);
}

/**
 * The settings every test and bench process starts from: example.test relayed to a primary on
 * loopback, SMTP on the port given, DATA_DIR; everything else the service default.
 */
export function serviceEnv(ports: { primary: number; smtp: number }, dataDir: string): Record<string, string> {
  return {
    RELAY_DOMAINS: 'example.test',
    PRIMARY: `127.0.0.1:${ports.primary}`,
    SMTP_HOST: '127.0.0.1',
    SMTP_PORT: String(ports.smtp),
    SMTP_HOSTNAME: 'backup.example.test',
    DATA_DIR: dataDir,
  };
}

/**
 * The environment of `npm start` in a test: serviceEnv, the HTTP port given, probes every 500 ms;
 * `extra` adds or overrides settings.
 */
export function oneProcessEnv(ports: { primary: number; smtp: number; http: number }, dataDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return { ...serviceEnv(ports, dataDir), HTTP_PORT: String(ports.http), PROBE_INTERVAL: '500ms', PROBE_TIMEOUT: '1s', ...extra };
}

/** The Deno binary the `deno` devDependency installs. */
export const DENO = join(ROOT, 'node_modules', '.bin', 'deno');

/** As spawnService, for any command run from the project's root (`deno task start`). */
export function spawnCommand(name: string, [command, ...args]: [string, ...string[]], env: Record<string, string>, logDir: string): Service {
  mkdirSync(logDir, { recursive: true });
  const log = createWriteStream(join(logDir, `${name}.log`), { flags: 'a' });
  const child = spawn(command, args, {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  let tail = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    tail = (tail + chunk.toString()).slice(-400);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  return {
    name,
    child,
    httpPort: Number(env.HTTP_PORT),
    exited,
    stderrTail: () => tail,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) sendSignal(child, signal);
      return exited;
    },
  };
}

/** Until /readyz says 200. Generous: on a loaded machine (2 cores, several test runs) a start can take 40 s. */
export async function waitReady(service: Service, timeoutMs = 120_000): Promise<void> {
  await waitFor(`${service.name} /readyz`, async () => {
    if (service.child.exitCode !== null) throw new Error(`${service.name} exited with ${service.child.exitCode}: ${service.stderrTail().trim() || '(nothing on stderr)'}`);
    const response = await fetch(`http://127.0.0.1:${service.httpPort}/readyz`);
    return response.status === 200;
  }, timeoutMs, 100);
}
