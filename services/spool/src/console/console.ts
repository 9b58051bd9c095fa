import { Buffer } from 'node:buffer';
import { fileURLToPath } from 'node:url';
import express, { type ErrorRequestHandler, type NextFunction, type Request, type Response, type Router } from 'express';
import helmet from 'helmet';
import { z } from 'zod';
import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { splitAddress } from '@backupmx/shared/rules/address.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import { clientKey } from '@backupmx/shared/rules/ip.ts';
import { HttpError, QUEUE_ID } from '../admin-api.ts';
import { isLocalClient, tokenMatches } from '../admin-auth.ts';
import { ACTIONS, applyAction, matchingIds, type Action } from '../bulk.ts';
import { flushDomain } from '../flush.ts';
import { wallSettings, walls } from '../http-walls.ts';
import type { PrimaryTracker } from '../primaries.ts';
import { filterFields, firstIssue, listFilterOf } from '../queue-filter.ts';
import { isOperator, scopeFilter, visibleMessage, type Principal } from './access.ts';
import { sameToken } from './csrf.ts';
import * as pages from './pages.ts';
import { verifyPassword } from './password.ts';
import { cookiesOf, createSessions, fingerprint, LOGIN_COOKIE, type Session } from './sessions.ts';
import { createSignInLimits } from './sign-in-limits.ts';

/**
 * The message view (mailparser, sanitize-html, postcss: about 15 MiB of a process's memory) is
 * loaded on the first message page an operator opens, not at start: most spools never show one.
 */
const messageView = () => import('./message-view.ts');

export interface ConsoleDeps {
  config: Pick<Config, 'ADMIN_TOKEN' | 'RELAY_DOMAINS' | 'PRIMARY' | 'domains' | 'TRACE_URL' | 'SMTP_HOSTNAME' | 'PUBLIC_URL' | 'CONSOLE_SESSION_LIFETIME'>;
  store: Store;
  broker: Broker;
  primaries: PrimaryTracker;
  log: Logger;
  now?: () => number;
}

const PAGE_CSP = {
  defaultSrc: ["'self'"],
  scriptSrc: ["'self'"],
  styleSrc: ["'self'"],
  imgSrc: ["'self'", 'data:'],
  frameSrc: ["'self'"],
  connectSrc: ["'self'"],
  objectSrc: ["'none'"],
  baseUri: ["'none'"],
  formAction: ["'self'"],
  frameAncestors: ["'none'"],
};

/** The message frame: nothing but inline style and the message's own (data:) images; no script even when opened on its own. */
const FRAME_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; font-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox";
/** Downloads (raw message, attachments): never rendered as a page of ours. */
const DOWNLOAD_CSP = "default-src 'none'; sandbox";

const queueQuery = z.strictObject({ ...filterFields, offset: z.string().regex(/^\d{1,9}$/, 'expected a whole number').transform(Number).optional() });
const PAGE_SIZE = 50;
const CONSOLE_PATHS = /^\/(?:$|queue(?:\/|$)|dead(?:\/|$)|login$|logout$|flush$|assets\/)/;

declare module 'express-serve-static-core' {
  interface Locals {
    session?: Session;
    sessionToken?: string;
  }
}

/**
 * The web console at / on the spool's HTTP port: for the operator an overview, the queue with
 * bulk actions, each message, the dead letters; for a domain's viewers the mail waiting for their
 * domain (the emergency inbox). Sign-in by form, sessions in the store's cache, CSRF tokens on
 * every form, the same Host and Origin walls as the API.
 */
export function consoleRouter(deps: ConsoleDeps): Router {
  const { config, store, broker, primaries, log } = deps;
  const now = deps.now ?? Date.now;
  const { names, publicOrigins } = wallSettings(config);
  const httpsNames = config.PUBLIC_URL.filter((url) => url.startsWith('https:')).map((url) => new URL(url).hostname.toLowerCase());
  const httpsPublic = httpsNames.length > 0;
  const sessions = createSessions(store, config.CONSOLE_SESSION_LIFETIME, httpsNames);
  const limits = createSignInLimits();
  const anyViewers = Object.values(config.domains).some((settings) => Object.keys(settings.VIEWERS ?? {}).length > 0);
  const router = express.Router();

  const frameOf = (res: Response, title: string, nav?: pages.Frame['nav']): pages.Frame => ({
    principal: res.locals.session?.principal ?? null,
    csrf: res.locals.session?.csrf ?? '',
    host: config.SMTP_HOSTNAME,
    title,
    ...(nav ? { nav } : {}),
  });
  const send = (res: Response, status: number, title: string, body: Parameters<typeof pages.document>[1], nav?: pages.Frame['nav'], refresh = false) => {
    res.status(status).type('html').send(pages.document(frameOf(res, title, nav), body, { refresh }));
  };
  const refuse = (res: Response, status: number, message: string) => send(res, status, 'Refused', pages.errorBody(status, message));
  const who = (req: Request, res: Response) => ({ by: res.locals.session?.principal.user ?? 'anonymous', client: req.socket.remoteAddress ?? null });

  // Only the console's own paths; anything else goes on to the other routes (and their 404).
  router.use((req, _res, next) => next(CONSOLE_PATHS.test(req.path) ? undefined : 'router'));
  router.use(
    helmet({
      contentSecurityPolicy: { useDefaults: false, directives: PAGE_CSP },
      referrerPolicy: { policy: 'same-origin' }, // no-referrer would make Chrome send Origin: null on our own forms
      strictTransportSecurity: httpsPublic,
      crossOriginEmbedderPolicy: false,
    }),
  );
  router.use(walls({ names, publicOrigins, json: false, refuse }));
  router.use('/assets', express.static(fileURLToPath(new URL('assets', import.meta.url)), { index: false, fallthrough: false, maxAge: '1h' }));
  router.use(express.urlencoded({ extended: false, limit: '4mb', parameterLimit: 200_000 }));

  /** Is a stored session still backed by the configuration (token or password unchanged, still local)? */
  function stillValid(session: Session, req: Request): boolean {
    const { principal } = session;
    if (principal.role === 'viewer') {
      const [name] = principal.user.split('@');
      const hash = viewerHash(principal.domain, name ?? '');
      return hash !== undefined && fingerprint(hash) === session.credential;
    }
    if (session.credential === 'local') return config.ADMIN_TOKEN === undefined && isLocalClient(req);
    return config.ADMIN_TOKEN !== undefined && fingerprint(config.ADMIN_TOKEN) === session.credential;
  }

  function viewerHash(domain: string, name: string): string | undefined {
    const viewers = config.domains[domain]?.VIEWERS ?? {};
    const key = Object.keys(viewers).find((candidate) => candidate.toLowerCase() === name.toLowerCase());
    return key === undefined ? undefined : viewers[key];
  }

  // Who is asking: a session, or (no ADMIN_TOKEN) a client on this host, who is the operator.
  router.use(async (req, res, next) => {
    const at = now();
    const found = await sessions.read(req, at);
    if (found && stillValid(found.session, req)) {
      res.locals.session = found.session;
      res.locals.sessionToken = found.token;
    } else if (config.ADMIN_TOKEN === undefined && isLocalClient(req) && req.method === 'GET') {
      res.locals.session = await sessions.create(req, res, { role: 'operator', user: 'loopback' }, 'local', at);
    }
    next();
  });

  router.get('/login', (req, res) => {
    if (res.locals.session) return void res.redirect(303, '/');
    send(res, 200, 'Sign in', pages.loginBody({ csrf: sessions.loginToken(req, res), operatorTokenSet: config.ADMIN_TOKEN !== undefined }));
  });

  router.post('/login', async (req, res) => {
    const body = (req.body ?? {}) as Record<string, unknown>;
    const user = String(body.user ?? '').trim().slice(0, 200);
    const again = (status: number, error: string) => send(res, status, 'Sign in', pages.loginBody({ csrf: sessions.loginToken(req, res), error, user, operatorTokenSet: config.ADMIN_TOKEN !== undefined }));
    if (!sameToken(body._csrf, cookiesOf(req)[LOGIN_COOKIE])) return again(403, 'The sign-in form has expired or did not come from this console (CSRF token missing or wrong): try again.');
    const client = clientKey(req.socket.remoteAddress ?? '');
    const at = now();
    const wait = limits.wait(client, at);
    if (wait > 0) {
      res.set('Retry-After', String(Math.ceil(wait / 1000)));
      return again(429, `Too many failed sign-ins from your address: try again in ${Math.ceil(wait / 1000)} s.`);
    }
    const password = String(body.password ?? '');
    let principal: Principal | null = null;
    let credential = '';
    if (user.toLowerCase() === 'admin' && config.ADMIN_TOKEN !== undefined) {
      if (tokenMatches(password, config.ADMIN_TOKEN)) [principal, credential] = [{ role: 'operator', user: 'admin' }, fingerprint(config.ADMIN_TOKEN)];
    } else {
      const address = splitAddress(user);
      const hash = address ? viewerHash(address.domain, address.local) : undefined;
      // Unknown names are checked against a decoy hash: they take as long as known ones.
      if ((await verifyPassword(password, hash)) && address && hash) {
        [principal, credential] = [{ role: 'viewer', user: `${address.local.toLowerCase()}@${address.domain}`, domain: address.domain }, fingerprint(hash)];
      }
    }
    if (!principal) {
      limits.fail(client, at);
      log.warn({ user, client: req.socket.remoteAddress ?? null }, 'console: sign-in failed');
      return again(401, 'Wrong user name or password.');
    }
    res.clearCookie(LOGIN_COOKIE, { path: '/' });
    await sessions.create(req, res, principal, credential, at);
    log.info({ user: principal.user, role: principal.role, client: req.socket.remoteAddress ?? null }, 'console: signed in');
    res.redirect(303, isOperator(principal) ? '/' : '/queue');
  });

  // Everything below needs a session; forms need its CSRF token.
  router.use((req, res, next) => {
    if (res.locals.session) return next();
    if (config.ADMIN_TOKEN === undefined && !anyViewers) {
      return refuse(res, 403, 'The console answers only on loopback while ADMIN_TOKEN is not set and no domain has VIEWERS.');
    }
    if (req.method === 'GET' || req.method === 'HEAD') return void res.redirect(303, '/login');
    refuse(res, 401, 'Sign in first.');
  });
  router.use((req, res, next) => {
    if (req.method !== 'POST') return next();
    if (sameToken((req.body as Record<string, unknown> | undefined)?._csrf, res.locals.session?.csrf)) return next();
    refuse(res, 403, 'The form has expired or did not come from this console (CSRF token missing or wrong): reload the page and try again.');
  });

  router.post('/logout', async (req, res) => {
    await sessions.destroy(req, res, res.locals.sessionToken, now());
    log.info(who(req, res), 'console: signed out');
    res.redirect(303, '/login');
  });

  const principalOf = (res: Response) => (res.locals.session as Session).principal;
  function operatorOnly(_req: Request, res: Response, next: NextFunction) {
    const principal = principalOf(res);
    if (isOperator(principal)) return next();
    refuse(res, 403, `This is for the operator. You are signed in as ${principal.user}, for the mail waiting for ${principal.domain}.`);
  }

  router.get('/', async (_req, res) => {
    const principal = principalOf(res);
    if (!isOperator(principal)) return void res.redirect(303, '/queue');
    const at = now();
    const [stats, lastHour, dead] = await Promise.all([store.stats(), store.activity(at - 3_600_000), deadCount()]);
    const data: pages.OverviewData = {
      now: at,
      primaries: Object.entries(primaries.states()).map(([target, state]) => ({ target, state: state.state, since: state.since, lastError: state.lastError, latencyMs: state.latencyMs })),
      queuedByRoute: stats.queued,
      held: stats.held,
      messages: stats.messages,
      oldestQueuedAt: stats.oldestQueuedAt,
      lastHour,
      dead,
    };
    send(res, 200, 'Overview', pages.overviewBody(data), 'overview', true);
  });

  async function deadCount(): Promise<number | null> {
    if (!broker.dead || !broker.connected()) return null;
    return (await broker.dead.list(0).catch(() => null))?.total ?? null;
  }

  /** The filter fields of a query string or form, without empty ones. */
  const asQuery = (input: Record<string, unknown>): Record<string, string> =>
    Object.fromEntries(Object.entries(input).flatMap(([key, value]) => (typeof value === 'string' && value.trim() !== '' && key in filterFields ? [[key, value.trim()]] : [])));

  router.get('/queue', async (req, res) => {
    const principal = principalOf(res);
    // An empty field of the filter form means "any".
    const query = asQuery(req.query as Record<string, unknown>);
    const parsed = queueQuery.safeParse({ ...query, ...(typeof req.query.offset === 'string' ? { offset: req.query.offset } : {}) });
    const at = now();
    const base = { now: at, principal, csrf: res.locals.session?.csrf ?? '', query, domains: config.RELAY_DOMAINS, limit: PAGE_SIZE };
    const title = isOperator(principal) ? 'Queue' : `Mail for ${principal.domain}`;
    if (!parsed.success) return send(res, 400, title, pages.queueBody({ ...base, error: firstIssue(parsed.error), total: 0, offset: 0, rows: [] }), 'queue');
    const offset = parsed.data.offset ?? 0;
    const { total, items } = await store.list({ ...scopeFilter(principal, listFilterOf(parsed.data, at)), limit: PAGE_SIZE, offset });
    const rows = items.flatMap((item) => {
      const visible = visibleMessage(principal, item);
      return visible ? [{ id: visible.message.id, receivedAt: visible.message.receivedAt, size: visible.message.size, from: visible.message.mailFrom, deliveries: visible.deliveries }] : [];
    });
    send(res, 200, title, pages.queueBody({ ...base, total, offset, rows }), 'queue');
  });

  const describe = (action: Action, messages: number, deliveries: number) => {
    const done = { retry: 'Made due now', hold: 'Held', release: 'Released', delete: 'Deleted' }[action];
    return `${done}: ${messages} message${messages === 1 ? '' : 's'} (${deliveries} deliver${deliveries === 1 ? 'y' : 'ies'}).`;
  };

  /** Apply an action and log each message touched, with who did it. */
  async function act(req: Request, res: Response, action: Action, ids: string[], filter: unknown) {
    const result = await applyAction(store, action, ids, now());
    const by = who(req, res);
    for (const id of result.messages) log[action === 'delete' ? 'warn' : 'info']({ queueId: id, action, ...by }, action === 'delete' ? 'console: message deleted' : `console: ${action}`);
    log.info({ action, ...by, filter, matched: ids.length, messages: result.messages.length, deliveries: result.deliveries }, `console: bulk ${action}`);
    return result;
  }

  function actionOf(value: unknown): { action: Action; scope: string } {
    const [action, scope = 'one'] = String(value ?? '').split(':');
    if (!ACTIONS.includes(action as Action)) throw new HttpError(400, 'unknown action');
    return { action: action as Action, scope };
  }

  router.post('/queue/action', operatorOnly, async (req, res) => {
    const body = req.body as Record<string, unknown>;
    const { action, scope } = actionOf(body.do);
    const query = asQuery(body);
    const back = `/queue${Object.keys(query).length ? `?${new URLSearchParams(Object.fromEntries(Object.entries(query).filter(([key]) => key !== 'before')))}` : ''}`;
    if (scope === 'selected') {
      const ids = [body.id].flat().filter((id): id is string => typeof id === 'string');
      if (ids.length === 0) throw new HttpError(400, 'Select at least one message first.');
      if (!ids.every((id) => QUEUE_ID.test(id))) throw new HttpError(400, 'not a queue id');
      const result = await act(req, res, action, ids, null);
      return send(res, 200, 'Done', pages.resultBody({ text: describe(action, result.messages.length, result.deliveries), back }), 'queue');
    }
    if (scope !== 'filter') throw new HttpError(400, 'unknown action');
    const parsed = z.strictObject(filterFields).safeParse(query);
    if (!parsed.success) throw new HttpError(400, firstIssue(parsed.error));
    const at = now();
    const filter = listFilterOf(parsed.data, at);
    const before = filter.receivedBefore ?? at;
    if (body.confirmed !== 'yes') {
      const { total } = await store.list({ ...filter, receivedBefore: before, limit: 0 });
      return send(res, 200, 'Confirm', pages.confirmBody({ csrf: res.locals.session?.csrf ?? '', action, count: total, before, query }), 'queue');
    }
    const { ids, total } = await matchingIds(store, { ...filter, receivedBefore: before });
    const result = await act(req, res, action, ids, parsed.data);
    const more = total > ids.length ? ` ${total - ids.length} more match: run it again.` : '';
    send(res, 200, 'Done', pages.resultBody({ text: `${describe(action, result.messages.length, result.deliveries)}${more}`, back }), 'queue');
  });

  function idOf(req: Request): string {
    const id = String(req.params.id);
    if (!QUEUE_ID.test(id)) throw new HttpError(400, `not a queue id: ${JSON.stringify(id.slice(0, 80))}`);
    return id;
  }

  /** The message as the session may see it; a viewer gets 403 for anything outside their domain's waiting mail (unknown ids too: nothing is revealed). */
  async function visible(req: Request, res: Response) {
    const id = idOf(req);
    const principal = principalOf(res);
    const detail = await store.getMessage(id);
    const shown = detail && visibleMessage(principal, detail);
    if (!shown) {
      if (isOperator(principal)) throw new HttpError(404, `No message ${id} in the queue.`);
      throw new HttpError(403, `No message ${id} among the mail waiting for ${principal.domain}.`);
    }
    const pending = shown.deliveries.some((delivery) => delivery.state === 'queued' || delivery.state === 'held');
    return { id, detail: shown, pending };
  }

  async function rawOf(id: string): Promise<Buffer> {
    const stream = await store.readBody(id);
    return Buffer.concat((await stream.toArray()).map((chunk: Uint8Array | string) => Buffer.from(chunk)));
  }

  router.get('/queue/:id', async (req, res) => {
    const { id, detail, pending } = await visible(req, res);
    const principal = principalOf(res);
    const view = pending ? await (await messageView()).viewMessage(await rawOf(id)) : null;
    const traceId = /^[\da-f]{2}-([\da-f]{32})-/.exec(detail.message.trace.traceparent ?? '')?.[1];
    const data: pages.MessageData = {
      now: now(),
      principal,
      csrf: res.locals.session?.csrf ?? '',
      id,
      from: detail.message.mailFrom,
      size: detail.message.size,
      receivedAt: detail.message.receivedAt,
      envelope: detail.message.envelope,
      deliveries: detail.deliveries,
      attempts: detail.attempts,
      traceUrl: config.TRACE_URL && traceId ? config.TRACE_URL.replaceAll('{traceId}', traceId) : null,
      view,
    };
    send(res, 200, view?.subject ?? id, pages.messageBody(data), 'queue');
  });

  /** A download that is never shown as one of our pages. */
  function download(res: Response, type: string, name: string, content: Buffer) {
    res.set('Content-Security-Policy', DOWNLOAD_CSP);
    res.attachment(name);
    res.type(type).send(content);
  }

  router.get('/queue/:id/raw', async (req, res) => {
    const { id, pending } = await visible(req, res);
    if (!pending) throw new HttpError(410, `The body of ${id} is no longer kept: every delivery is settled.`);
    log.info({ queueId: id, ...who(req, res) }, 'console: message downloaded');
    download(res, 'message/rfc822', `${id}.eml`, await rawOf(id));
  });

  router.get('/queue/:id/attachment/:index', async (req, res) => {
    const { id, pending } = await visible(req, res);
    const index = Number(req.params.index);
    if (!pending || !Number.isInteger(index) || index < 0) throw new HttpError(404, 'No such attachment.');
    const attachment = await (await messageView()).attachmentOf(await rawOf(id), index);
    if (!attachment) throw new HttpError(404, 'No such attachment.');
    log.info({ queueId: id, attachment: attachment.name, ...who(req, res) }, 'console: attachment downloaded');
    download(res, 'application/octet-stream', attachment.name, attachment.content);
  });

  router.get('/queue/:id/html', async (req, res) => {
    const { id, pending } = await visible(req, res);
    const view = pending ? await (await messageView()).viewMessage(await rawOf(id)) : null;
    if (view?.html == null) throw new HttpError(404, 'This message has no HTML part.');
    res.set('Content-Security-Policy', FRAME_CSP);
    res.set('X-Frame-Options', 'SAMEORIGIN');
    res.status(200).type('html').send((await messageView()).frameDocument(view.html));
  });

  router.post('/queue/:id/action', operatorOnly, async (req, res) => {
    const id = idOf(req);
    const { action } = actionOf((req.body as Record<string, unknown>).do);
    if (!(await store.getMessage(id))) throw new HttpError(404, `No message ${id} in the queue.`);
    const result = await act(req, res, action, [id], null);
    if (result.messages.length === 0) throw new HttpError(409, `Message ${id}: nothing to ${action} (${action === 'release' ? 'nothing is held' : action === 'retry' ? 'nothing queued; held mail needs release' : 'nothing queued'}).`);
    send(res, 200, 'Done', pages.resultBody({ text: describe(action, result.messages.length, result.deliveries), back: action === 'delete' ? '/queue' : `/queue/${id}` }), 'queue');
  });

  router.post('/flush', operatorOnly, (req, res) => {
    const domain = String((req.body as Record<string, unknown>).domain ?? '').trim();
    const flushed = flushDomain(config, broker, domain === '' ? undefined : domain);
    if ('error' in flushed) throw new HttpError(flushed.status, flushed.error);
    log.info({ route: flushed.route, domain: domain || undefined, ...who(req, res) }, 'console: flush');
    send(res, 202, 'Done', pages.resultBody({ text: `Flush requested for ${domain ? `${domain} (route ${flushed.route})` : 'every route'}: the deliverers try the queued mail now.`, back: '/queue' }), 'queue');
  });

  function deadLetters() {
    if (!broker.dead) throw new HttpError(501, 'This broker has no dead-letter queue.');
    if (!broker.connected()) throw new HttpError(503, 'The message broker is not connected.');
    return broker.dead;
  }

  router.get('/dead', operatorOnly, async (_req, res) => {
    const { total, items } = await deadLetters().list(200);
    send(res, 200, 'Dead letters', pages.deadBody({ csrf: res.locals.session?.csrf ?? '', total, rows: items }), 'dead');
  });

  router.get('/dead/:id', operatorOnly, async (req, res) => {
    const { items } = await deadLetters().list(1000);
    const row = items.find((item) => item.id === req.params.id);
    if (!row) throw new HttpError(404, `No dead letter ${String(req.params.id).slice(0, 100)} (among the first 1000).`);
    send(res, 200, `Dead letter ${row.id}`, pages.deadLetterBody({ csrf: res.locals.session?.csrf ?? '', row }), 'dead');
  });

  router.post('/dead/:id/replay', operatorOnly, async (req, res) => {
    const id = String(req.params.id);
    if (!/^[0-9A-Za-z:._-]{1,100}$/.test(id)) throw new HttpError(400, 'not a dead-letter id');
    if (!(await deadLetters().replay(id))) throw new HttpError(404, `No dead letter ${id}.`);
    log.info({ queueId: id, ...who(req, res) }, 'console: dead letter replayed');
    send(res, 200, 'Done', pages.resultBody({ text: `Dead letter ${id} was put back into the spool.`, back: '/dead' }), 'dead');
  });

  const errors: ErrorRequestHandler = (error: unknown, _req: Request, res: Response, _next) => {
    if (error instanceof HttpError) return refuse(res, error.status, error.message);
    const status = (error as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) return refuse(res, status, (error as Error).message);
    log.error({ err: error }, 'console request failed');
    if (res.headersSent) return void res.destroy();
    refuse(res, 500, `Internal error: ${(error as Error).message}`);
  };
  router.use(errors);
  return router;
}
