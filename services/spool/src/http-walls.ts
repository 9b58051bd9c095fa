import type { Request, RequestHandler, Response } from 'express';

/**
 * The walls in front of the admin API and the web console, against what a web page open in the
 * operator's browser can do: DNS rebinding (a Host that is not ours), cross-site requests (an
 * Origin or Referer that is not ours), and "simple" cross-site POSTs (a body that is not JSON, which
 * a page can send without a CORS preflight). No CORS headers are ever sent. Pure decisions first,
 * then the middleware.
 */

/** host[:port] of a Host header or URL authority, the name lower-cased; null when it does not parse. */
export function hostOf(authority: string | undefined): { name: string; port: string } | null {
  if (!authority || /[\s/\\?#@]/.test(authority)) return null;
  try {
    const url = new URL(`http://${authority}`);
    return { name: url.hostname.toLowerCase().replace(/\.$/, ''), port: url.port };
  } catch {
    return null;
  }
}

/**
 * Is this Host one of ours? IP literals are (a DNS-rebinding page always has a name of its own);
 * `localhost` and `*.localhost` are; so are SMTP_HOSTNAME and the names of PUBLIC_URL (`names`).
 */
export function hostAllowed(hostHeader: string | undefined, names: readonly string[]): boolean {
  const host = hostOf(hostHeader);
  if (!host) return false;
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(host.name) || host.name.startsWith('[')) return true;
  if (host.name === 'localhost' || host.name.endsWith('.localhost')) return true;
  return names.includes(host.name);
}

/**
 * May a request that changes something go ahead, by where the browser says it comes from? The
 * Origin header (or, without one, the Referer) must name this very host (scheme http or https) or
 * one of `publicOrigins`. Without either header it is not a browser's cross-site request (the CLI,
 * curl): allowed, the other walls still apply.
 */
export function originAllowed(origin: string | undefined, referer: string | undefined, hostHeader: string | undefined, publicOrigins: readonly string[]): boolean {
  const from = origin ?? referer;
  if (from === undefined) return true;
  let url: URL;
  try {
    url = new URL(from);
  } catch {
    return false; // "null" (a sandboxed frame, a data: URL) and anything unreadable
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
  if (publicOrigins.includes(url.origin)) return true;
  const own = hostOf(hostHeader);
  return own !== null && url.host.toLowerCase() === `${own.name}${own.port ? `:${own.port}` : ''}`;
}

export const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * The API takes bodies as JSON only: a request that changes something and declares another type,
 * or sends a body without declaring application/json, gets a reason (415); null when fine.
 */
export function jsonBodyProblem(method: string, contentType: string | undefined, hasBody: boolean): string | null {
  if (SAFE_METHODS.has(method)) return null;
  const type = contentType?.split(';')[0]?.trim().toLowerCase();
  if (type === undefined || type === '') return hasBody ? 'send the request body as Content-Type: application/json' : null;
  return type === 'application/json' ? null : `Content-Type ${type} is not accepted: send application/json`;
}

export interface WallOptions {
  /** Host names besides IP literals and localhost: SMTP_HOSTNAME and PUBLIC_URL's. */
  names: readonly string[];
  publicOrigins: readonly string[];
  /** The API: bodies must be JSON. */
  json: boolean;
  refuse: (res: Response, status: number, message: string) => void;
}

/** Host, Origin/Referer and (for the API) JSON-only walls, in that order. */
export function walls(options: WallOptions): RequestHandler {
  return (req: Request, res: Response, next) => {
    const host = req.get('host');
    if (!hostAllowed(host, options.names)) {
      return options.refuse(res, 400, `unknown host name ${JSON.stringify(String(host ?? '').slice(0, 100))}: use localhost, an IP address, SMTP_HOSTNAME or a name of PUBLIC_URL`);
    }
    if (!SAFE_METHODS.has(req.method) && !originAllowed(req.get('origin'), req.get('referer'), host, options.publicOrigins)) {
      return options.refuse(res, 403, `cross-site request refused: Origin ${JSON.stringify(String(req.get('origin') ?? req.get('referer')).slice(0, 100))} is not this server`);
    }
    if (options.json) {
      const hasBody = req.get('transfer-encoding') !== undefined || Number(req.get('content-length') ?? 0) > 0;
      const problem = jsonBodyProblem(req.method, req.get('content-type'), hasBody);
      if (problem) return options.refuse(res, 415, problem);
    }
    next();
  };
}

/** Names and origins for the walls from the configuration. */
export function wallSettings(config: { SMTP_HOSTNAME: string; PUBLIC_URL: readonly string[] }): { names: string[]; publicOrigins: string[] } {
  const urls = config.PUBLIC_URL.map((text) => new URL(text));
  return {
    names: [config.SMTP_HOSTNAME.toLowerCase().replace(/\.$/, ''), ...urls.map((url) => url.hostname.toLowerCase())],
    publicOrigins: urls.map((url) => url.origin),
  };
}
