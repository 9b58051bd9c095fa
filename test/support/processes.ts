import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './util.ts';

export const ROOT = join(import.meta.dirname, '..', '..');

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
  /** SIGTERM (or another signal) and wait for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/**
 * Start a backupmx entry point as its own process (Node 24, type stripping, as `npm start` does),
 * with exactly `env` plus PATH; its output goes to LOG_DIR/<name>.log for post-mortems.
 */
export function spawnService(name: string, entry: keyof typeof ENTRY, env: Record<string, string>, logDir: string): Service {
  mkdirSync(logDir, { recursive: true });
  const log = createWriteStream(join(logDir, `${name}.log`), { flags: 'a' });
  const child = spawn(process.execPath, [join(ROOT, ENTRY[entry])], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.pipe(log, { end: false });
  child.stderr?.pipe(log, { end: false });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : null))));
  return {
    name,
    child,
    httpPort: Number(env.HTTP_PORT),
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** Until /readyz says 200. Generous: on a loaded machine (2 cores, several test runs) a start can take 40 s. */
export async function waitReady(service: Service, timeoutMs = 120_000): Promise<void> {
  await waitFor(`${service.name} /readyz`, async () => {
    if (service.child.exitCode !== null) throw new Error(`${service.name} exited with ${service.child.exitCode}`);
    const response = await fetch(`http://127.0.0.1:${service.httpPort}/readyz`);
    return response.status === 200;
  }, timeoutMs, 100);
}
