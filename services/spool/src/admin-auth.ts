import { createHash, timingSafeEqual } from 'node:crypto';
import type { Request, RequestHandler } from 'express';

/** 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
export function isLoopback(address: string | undefined): boolean {
  if (!address) return false;
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  return v4.startsWith('127.') || address === '::1';
}

/**
 * A client on this host: the socket's address is loopback (never X-Forwarded-For) and no proxy says
 * it forwarded the request (a reverse proxy on the same host would otherwise make everyone local).
 */
export function isLocalClient(req: Pick<Request, 'socket' | 'get'>): boolean {
  return isLoopback(req.socket.remoteAddress) && !['forwarded', 'x-forwarded-for', 'x-real-ip'].some((name) => req.get(name) !== undefined);
}

/** Constant-time comparison of a presented token with ADMIN_TOKEN (hashed first: equal lengths). */
export function tokenMatches(given: string, token: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();
  return timingSafeEqual(digest(given), digest(token));
}

/**
 * The admin API's gate. With ADMIN_TOKEN: `Authorization: Bearer <token>` or 401. Without it: only
 * local clients (isLocalClient), others get 403.
 */
export function adminAuth(token: string | undefined): RequestHandler {
  return (req, res, next) => {
    if (token === undefined) {
      if (isLocalClient(req)) return next();
      res.status(403).json({ error: 'the admin API answers only on loopback while ADMIN_TOKEN is not set (and not through a proxy)' });
      return;
    }
    const given = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.get('authorization') ?? '')?.[1];
    if (given === undefined) {
      res.status(401).set('WWW-Authenticate', 'Bearer realm="backupmx"').json({ error: 'missing bearer token: send Authorization: Bearer <ADMIN_TOKEN>' });
      return;
    }
    if (!tokenMatches(given, token)) {
      res.status(401).set('WWW-Authenticate', 'Bearer realm="backupmx", error="invalid_token"').json({ error: 'wrong bearer token' });
      return;
    }
    next();
  };
}
