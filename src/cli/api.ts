import { constants as osConstants } from 'node:os';

/** A one-line failure of the CLI, with the exit code it ends with (sysexits.h). */
export class CliError extends Error {
  exitCode: number;
  constructor(message: string, exitCode = 1) {
    super(message);
    this.exitCode = exitCode;
  }
}

export const EXIT = { usage: 64, unavailable: 69, noPermission: 77, failure: 1 } as const;

export interface ApiOptions {
  /** BACKUPMX_API, e.g. http://127.0.0.1:8025 */
  base: string;
  /** ADMIN_TOKEN, sent as a bearer token when set. */
  token?: string | undefined;
  timeoutMs?: number;
}

export interface ApiResponse {
  status: number;
  body: unknown;
  text: string;
}

/** Linux/BSD error numbers by name (ECONNREFUSED...), to read Deno's "(os error 111)". */
const ERRNO_NAMES = new Map(Object.entries(osConstants.errno).map(([name, number]) => [number, name]));

/**
 * Why a fetch failed, as a system error code where there is one. Node's fetch puts it in
 * `cause.code`; Deno's has no cause and says it in the message: "...tcp connect error: Connection
 * refused (os error 111)", "dns error: failed to lookup address information: ...".
 */
export function causeOf(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code) return cause.code;
  const message = cause?.message ?? (error as Error).message;
  const errno = /\(os error (\d+)\)/.exec(message);
  const name = errno ? ERRNO_NAMES.get(Number(errno[1])) : undefined;
  if (name) return name;
  if (/dns error|failed to lookup address/i.test(message)) return 'ENOTFOUND';
  return message;
}

/**
 * Call the admin API. Every failure becomes one CliError line: unreachable (69), unauthorized or
 * forbidden (77), any other refusal with the API's own `error` text (1).
 */
export async function callApi(options: ApiOptions, method: string, path: string, body?: unknown): Promise<ApiResponse> {
  let url: URL;
  try {
    url = new URL(path, options.base.endsWith('/') ? options.base : `${options.base}/`);
  } catch {
    throw new CliError(`BACKUPMX_API is not a URL: ${JSON.stringify(options.base)}`, EXIT.usage);
  }
  const headers: Record<string, string> = { accept: 'application/json' };
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  // The API takes request bodies as JSON only: every POST carries one, declared as such.
  const payload = body ?? (method === 'POST' ? {} : undefined);
  if (payload !== undefined) headers['content-type'] = 'application/json';
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers,
      ...(payload !== undefined ? { body: JSON.stringify(payload) } : {}),
      signal: AbortSignal.timeout(options.timeoutMs ?? 30_000),
    });
  } catch (error) {
    const reason = (error as Error).name === 'TimeoutError' ? 'no answer in time' : causeOf(error);
    throw new CliError(`cannot reach the admin API at ${url.origin} (${reason}); is the spool running? set BACKUPMX_API`, EXIT.unavailable);
  }
  const text = await response.text();
  let parsed: unknown = null;
  if ((response.headers.get('content-type') ?? '').includes('json')) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = null;
    }
  }
  if (response.ok) return { status: response.status, body: parsed, text };
  const message = (parsed as { error?: unknown } | null)?.error;
  const said = typeof message === 'string' ? message : `HTTP ${response.status}`;
  if (response.status === 401) {
    throw new CliError(`unauthorized: ${said}; ${options.token ? 'ADMIN_TOKEN does not match the server' : 'set ADMIN_TOKEN'}`, EXIT.noPermission);
  }
  if (response.status === 403) throw new CliError(`forbidden: ${said}`, EXIT.noPermission);
  if (response.status === 404 && said === 'not found') {
    throw new CliError(`${url.origin} has no admin API (${method} ${url.pathname} not found); point BACKUPMX_API at the spool service`, EXIT.unavailable);
  }
  throw new CliError(said, EXIT.failure);
}
