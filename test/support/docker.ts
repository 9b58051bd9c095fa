/**
 * A Docker engine and docker compose as a user runs them, for `npm run test:compose`
 * (test/docker/compose-up.ts): commands with a time limit and their output, whether the engine
 * answers, and how compose is invoked on this machine (the project's file as it is when the pinned
 * images can be pulled; otherwise ../shared/docker-standins/compose.sh, which adds its override).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './processes.ts';

export interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run a command to its end (or `timeoutMs`, then SIGKILL); never throws. */
export function run(command: string, args: string[], options: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(command, args, { cwd: options.cwd ?? ROOT, env: options.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 120_000);
    child.on('error', (error) => {
      clearTimeout(timer);
      resolve({ code: null, stdout, stderr: `${stderr}${error.message}` });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** As run(), but a non-zero exit is an error naming the command and its output. */
export async function must(command: string, args: string[], options: Parameters<typeof run>[2] = {}): Promise<string> {
  const result = await run(command, args, options);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${result.code}:\n${result.stderr.slice(-3000)}${result.stdout.slice(-2000)}`);
  return result.stdout;
}

/** The stand-ins folder beside the project (CI clones the project next to shared/). */
export const STANDINS = join(ROOT, '..', 'shared', 'docker-standins');

export function standinsPresent(): boolean {
  return existsSync(join(STANDINS, 'build.sh')) && existsSync(join(STANDINS, 'compose.sh'));
}

export async function engineAnswers(): Promise<boolean> {
  return (await run('docker', ['info', '--format', '{{.ServerVersion}}'], { timeoutMs: 20_000 })).code === 0;
}

/** `docker compose` (v2) when the CLI has it, else null. */
export async function composeV2(): Promise<boolean> {
  return (await run('docker', ['compose', 'version'], { timeoutMs: 20_000 })).code === 0;
}
