import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseEnv } from 'node:util';
import { parse } from 'yaml';
import { ROOT } from './processes.ts';

export interface ComposeService {
  image?: string;
  build?: unknown;
  command?: string[];
  environment?: Record<string, string>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck?: { test: string[] };
  restart?: string;
  profiles?: string[];
  deploy?: { replicas?: number; resources?: { limits?: { memory?: string } } };
}

export interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

/**
 * Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
 * `${VAR:?error}`, `${VAR?error}`, and `$$` for a literal `$`. A variable that is not set is an
 * error here (compose would warn and use an empty string).
 */
export function interpolate(text: string, vars: Record<string, string | undefined>): string {
  const pattern = /\$(?:(\$)|\{([A-Za-z_]\w*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))/g;
  return text.replace(pattern, (_match, dollar?: string, braced?: string, op?: string, arg?: string, bare?: string) => {
    if (dollar) return '$';
    const name = (braced ?? bare) as string;
    const value = vars[name];
    if (op === ':-') return value ? value : (arg ?? '');
    if (op === '-') return value ?? arg ?? '';
    if ((op === ':?' && !value) || (op === '?' && value === undefined)) throw new Error(`${name}: ${arg || 'is required'}`);
    if (value === undefined) throw new Error(`compose variable ${name} is not set in .env`);
    return value;
  });
}

function interpolateAll(value: unknown, vars: Record<string, string | undefined>): unknown {
  if (typeof value === 'string') return interpolate(value, vars);
  if (Array.isArray(value)) return value.map((item) => interpolateAll(item, vars));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([key, item]) => [key, interpolateAll(item, vars)]));
  }
  return value;
}

/**
 * docker-compose.yml as written (`raw`, YAML anchors and merge keys resolved) and as compose runs it
 * (`resolved`: every ${VAR} taken from .env), with the .env variables.
 */
export function loadCompose(): { raw: ComposeFile; resolved: ComposeFile; env: Record<string, string> } {
  const raw = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as ComposeFile;
  const env = parseEnv(readFileSync(join(ROOT, '.env'), 'utf8')) as Record<string, string>;
  return { raw, resolved: interpolateAll(raw, env) as ComposeFile, env };
}
