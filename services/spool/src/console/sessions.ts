import { createHash, randomBytes } from 'node:crypto';
import type { Request, Response } from 'express';
import { parse as parseCookies } from 'cookie';
import type { Store } from '@backupmx/shared/store/store.ts';
import type { Principal } from './access.ts';

export const SESSION_COOKIE = 'backupmx_session';
export const LOGIN_COOKIE = 'backupmx_login';

/** What the store keeps of a sign-in (in its cache, so every spool instance knows it and it survives restarts). */
export interface Session {
  principal: Principal;
  /** The CSRF token of this session's forms. */
  csrf: string;
  expiresAt: number;
  /**
   * A fingerprint of the credential signed in with (the token's or the password hash's): when the
   * operator changes it in the configuration, sessions made with the old one end.
   */
  credential: string;
}

export const newToken = () => randomBytes(32).toString('base64url');
export const fingerprint = (secret: string) => createHash('sha256').update(`backupmx console\0${secret}`).digest('base64url').slice(0, 22);
const keyOf = (token: string) => `console.session:${createHash('sha256').update(token).digest('base64url')}`;

export function cookiesOf(req: Request): Record<string, string | undefined> {
  return parseCookies(req.get('cookie') ?? '');
}

/**
 * Secure cookies when the browser talks TLS to us or to a proxy in front (X-Forwarded-Proto; a
 * client that fakes it only stops getting its own cookie back), or uses a name of an https
 * PUBLIC_URL (`httpsNames`).
 */
export function secureRequest(req: Pick<Request, 'secure' | 'get'>, httpsNames: readonly string[]): boolean {
  const host = (req.get('host') ?? '').toLowerCase().replace(/:\d+$/, '').replace(/\.$/, '');
  return req.secure || /^https\b/i.test(req.get('x-forwarded-proto') ?? '') || httpsNames.includes(host);
}

export function createSessions(store: Store, lifetimeMs: number, httpsNames: readonly string[]) {
  const cookieOptions = (req: Request, maxAge: number) => ({ httpOnly: true, sameSite: 'strict' as const, secure: secureRequest(req, httpsNames), path: '/', maxAge });
  return {
    async create(req: Request, res: Response, principal: Principal, credential: string, now: number): Promise<Session> {
      const token = newToken();
      const session: Session = { principal, csrf: newToken(), expiresAt: now + lifetimeMs, credential };
      await store.cachePut(keyOf(token), JSON.stringify(session), session.expiresAt);
      res.cookie(SESSION_COOKIE, token, cookieOptions(req, lifetimeMs));
      return session;
    },
    async read(req: Request, now: number): Promise<{ token: string; session: Session } | null> {
      const token = cookiesOf(req)[SESSION_COOKIE];
      if (!token || !/^[A-Za-z0-9_-]{43}$/.test(token)) return null;
      const text = await store.cacheGet(keyOf(token), now);
      if (!text) return null;
      try {
        const session = JSON.parse(text) as Session;
        return session.expiresAt > now ? { token, session } : null;
      } catch {
        return null;
      }
    },
    async destroy(req: Request, res: Response, token: string | undefined, now: number): Promise<void> {
      if (token) await store.cachePut(keyOf(token), '', now - 1);
      res.clearCookie(SESSION_COOKIE, { ...cookieOptions(req, 0), maxAge: undefined });
    },
    /** The sign-in form's double-submit token, in a short-lived cookie. */
    loginToken(req: Request, res: Response): string {
      const existing = cookiesOf(req)[LOGIN_COOKIE];
      const token = existing && /^[A-Za-z0-9_-]{43}$/.test(existing) ? existing : newToken();
      res.cookie(LOGIN_COOKIE, token, cookieOptions(req, 3_600_000));
      return token;
    },
  };
}

export type Sessions = ReturnType<typeof createSessions>;
