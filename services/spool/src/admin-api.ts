import { pipeline } from 'node:stream/promises';
import express, { type ErrorRequestHandler, type Request, type Response, type Router } from 'express';
import helmet from 'helmet';
import { z } from 'zod';
import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import type { MessageDetail, MessageSummary, Store } from '@backupmx/shared/store/store.ts';
import type { Delivery } from '@backupmx/shared/types.ts';
import { adminAuth } from './admin-auth.ts';
import { ACTIONS, applyAction, matchingIds, MAX_BULK, type Action } from './bulk.ts';
import { flushDomain } from './flush.ts';
import { wallSettings, walls } from './http-walls.ts';
import type { PrimaryTracker } from './primaries.ts';
import { filterFields, firstIssue, listFilterOf } from './queue-filter.ts';

export interface AdminDeps {
  config: Pick<Config, 'ADMIN_TOKEN' | 'RELAY_DOMAINS' | 'PRIMARY' | 'domains' | 'TRACE_URL' | 'SMTP_HOSTNAME' | 'PUBLIC_URL'>;
  store: Store;
  broker: Broker;
  primaries: PrimaryTracker;
  log: Logger;
  now?: () => number;
}

/** A 4xx (or 503) answer: `{ "error": message }`. */
export class HttpError extends Error {
  status: number;
  constructor(status: number, message: string) {
    super(message);
    this.status = status;
  }
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

/** The trace id in a stored W3C traceparent, or null. */
export function traceIdOf(trace: Record<string, string> | undefined): string | null {
  const id = /^[\da-f]{2}-([\da-f]{32})-[\da-f]{16}-[\da-f]{2}$/.exec(trace?.traceparent ?? '')?.[1];
  return id && !/^0+$/.test(id) ? id : null;
}

function deliveryView(delivery: Delivery) {
  return {
    recipient: delivery.recipient,
    route: delivery.route,
    state: delivery.state,
    attempts: delivery.attempts,
    nextAttemptAt: delivery.state === 'queued' ? iso(delivery.nextAttemptAt) : null,
    lastAttemptAt: iso(delivery.lastAttemptAt),
    lastReply: delivery.lastReply,
    lastNextHop: delivery.lastNextHop ?? null,
    settledAt: iso(delivery.settledAt ?? null),
  };
}

/** One message as GET /api/queue lists it. */
export function summaryView(summary: MessageSummary, now: number) {
  const { message } = summary;
  return {
    id: message.id,
    from: message.mailFrom,
    recipients: message.recipients,
    size: message.size,
    receivedAt: iso(message.receivedAt),
    ageSeconds: Math.max(0, Math.round((now - message.receivedAt) / 1000)),
    deliveries: summary.deliveries.map(deliveryView),
  };
}

/** One message as GET /api/queue/:id shows it: envelope, deliveries, every attempt, its trace. */
export function detailView(detail: MessageDetail, now: number, traceUrl: string | undefined) {
  const traceId = traceIdOf(detail.message.trace);
  return {
    ...summaryView(detail, now),
    envelope: detail.message.envelope ?? { mailFrom: detail.message.mailFrom, rcptTo: detail.message.recipients },
    traceId,
    ...(traceUrl && traceId ? { traceUrl: traceUrl.replaceAll('{traceId}', traceId) } : {}),
    attempts: detail.attempts.map((attempt) => ({ ...attempt, at: iso(attempt.at) })),
  };
}

function parse<T extends z.ZodType>(schema: T, input: unknown): z.infer<T> {
  const result = schema.safeParse(input);
  if (!result.success) throw new HttpError(400, firstIssue(result.error));
  return result.data;
}

const whole = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d+$/, `expected a whole number from ${min} to ${max}`)
    .transform(Number)
    .refine((n) => n >= min && n <= max, `expected a whole number from ${min} to ${max}`);

const queueQuery = z.strictObject({
  ...filterFields,
  limit: whole(1, 1000).optional(),
  offset: whole(0, 1_000_000_000).optional(),
});

export const QUEUE_ID = /^[0-9A-Za-z]{1,64}$/;

/** POST /api/queue/ACTION: by ids, or by filter (with dryRun: only count). */
const bulkBody = z
  .strictObject({
    ids: z.array(z.string().regex(QUEUE_ID, 'expected queue ids')).min(1, 'expected at least one queue id').max(MAX_BULK, `at most ${MAX_BULK} ids`).optional(),
    filter: z.strictObject(filterFields).optional(),
    dryRun: z.boolean().optional(),
  })
  .refine((body) => (body.ids === undefined) !== (body.filter === undefined), { message: 'give either ids or a filter ({} for every message)', path: ['ids'] })
  .refine((body) => !body.dryRun || body.filter !== undefined, { message: 'only counts the messages of a filter', path: ['dryRun'] });

/** Who made an API request, for the log: the token's bearer or a loopback client, and the address. */
function caller(req: Request, token: string | undefined) {
  return { by: token === undefined ? 'loopback' : 'admin token', client: req.socket.remoteAddress ?? null };
}
const DEAD_ID = /^[0-9A-Za-z:._-]{1,100}$/;

function queueId(req: Request): string {
  const id = String(req.params.id);
  if (!QUEUE_ID.test(id)) throw new HttpError(400, `id: not a queue id: ${JSON.stringify(id.slice(0, 80))}`);
  return id;
}

/**
 * The admin API, mounted at /api on the spool's HTTP port: the queue (list, show, raw, retry, hold,
 * release, delete), flush, the primaries, the dead-letter queue. JSON in and out; every bad input
 * gets a 4xx `{ "error": "<what is wrong>" }`, an unknown id 404.
 */
export function adminRouter(deps: AdminDeps): Router {
  const { config, store, broker, primaries, log } = deps;
  const now = deps.now ?? Date.now;
  const router = express.Router();
  router.use(helmet({ contentSecurityPolicy: { useDefaults: false, directives: { defaultSrc: ["'none'"], frameAncestors: ["'none'"] } } }));
  router.use(walls({ ...wallSettings(config), json: true, refuse: (res, status, error) => void res.status(status).json({ error }) }));
  router.use(adminAuth(config.ADMIN_TOKEN));
  router.use(express.json({ limit: '4mb' }));

  async function existing(id: string): Promise<MessageDetail> {
    const detail = await store.getMessage(id);
    if (!detail) throw new HttpError(404, `no message ${id} in the queue`);
    return detail;
  }

  router.get('/queue', async (req, res) => {
    const query = parse(queueQuery, req.query);
    const limit = query.limit ?? 50;
    const offset = query.offset ?? 0;
    const at = now();
    const { total, items } = await store.list({ ...listFilterOf(query, at), limit, offset });
    res.json({ total, offset, limit, items: items.map((item) => summaryView(item, at)) });
  });

  router.get('/queue/:id', async (req, res) => {
    res.json(detailView(await existing(queueId(req)), now(), config.TRACE_URL));
  });

  router.get('/queue/:id/raw', async (req, res) => {
    const detail = await existing(queueId(req));
    if (!detail.deliveries.some((delivery) => delivery.state === 'queued' || delivery.state === 'held')) {
      throw new HttpError(410, `the body of ${detail.message.id} is no longer kept: every delivery is settled`);
    }
    const body = await store.readBody(detail.message.id);
    res.status(200).type('message/rfc822').set('Content-Disposition', `inline; filename="${detail.message.id}.eml"`);
    await pipeline(body, res);
  });

  /** One action on many messages, logged per message (with who) and in sum. */
  async function runBulk(action: Action, ids: string[], at: number, who: Record<string, unknown>, filter: unknown) {
    const result = await applyAction(store, action, ids, at);
    for (const id of result.messages) log[action === 'delete' ? 'warn' : 'info']({ queueId: id, action, ...who }, action === 'delete' ? 'admin: message deleted' : `admin: ${action}`);
    log.info({ action, ...who, filter, matched: ids.length, messages: result.messages.length, deliveries: result.deliveries }, `admin: bulk ${action}`);
    return { messages: result.messages.length, deliveries: result.deliveries, ids: result.messages };
  }

  const actions = {
    retry: { run: (id: string) => store.retryNow(id, now()), none: 'no queued delivery to retry (held ones need release)' },
    hold: { run: (id: string) => store.hold(id), none: 'no queued delivery to hold' },
    release: { run: (id: string) => store.release(id, now()), none: 'no held delivery to release' },
  } as const;
  for (const [action, { run, none }] of Object.entries(actions)) {
    router.post(`/queue/:id/${action}`, async (req, res) => {
      const id = queueId(req);
      await existing(id);
      const changed = await run(id);
      if (changed === 0) throw new HttpError(409, `message ${id}: ${none}`);
      log.info({ queueId: id, action, deliveries: changed, ...caller(req, config.ADMIN_TOKEN) }, `admin: ${action}`);
      res.json({ id, action, deliveries: changed });
    });
  }

  router.delete('/queue/:id', async (req, res) => {
    const id = queueId(req);
    if (!(await store.remove(id))) throw new HttpError(404, `no message ${id} in the queue`);
    log.warn({ queueId: id, ...caller(req, config.ADMIN_TOKEN) }, 'admin: message deleted');
    res.json({ id, deleted: true });
  });

  for (const action of ACTIONS) {
    router.post(`/queue/${action}`, async (req, res) => {
      const body = parse(bulkBody, req.body ?? {});
      const at = now();
      if (body.filter !== undefined) {
        const filter = listFilterOf(body.filter, at);
        if (body.dryRun) {
          const { total } = await store.list({ ...filter, limit: 0 });
          return void res.json({ action, dryRun: true, matched: total, before: iso(filter.receivedBefore ?? at) });
        }
        const { ids, total } = await matchingIds(store, { ...filter, receivedBefore: filter.receivedBefore ?? at });
        const done = await runBulk(action, ids, at, caller(req, config.ADMIN_TOKEN), body.filter);
        return void res.json({ action, matched: total, ...done, ...(total > ids.length ? { remaining: total - ids.length } : {}) });
      }
      const ids = [...new Set(body.ids)];
      res.json({ action, matched: ids.length, ...(await runBulk(action, ids, at, caller(req, config.ADMIN_TOKEN), null)) });
    });
  }
  router.post('/flush', async (req, res) => {
    const body = parse(z.strictObject({ domain: z.string().trim().min(1, 'expected a domain').optional() }), req.body ?? {});
    const domain = body.domain ?? (typeof req.query.domain === 'string' ? req.query.domain.trim() : undefined);
    const flushed = flushDomain(config, broker, domain);
    if ('error' in flushed) throw new HttpError(flushed.status, flushed.error);
    log.info({ route: flushed.route, domain, ...caller(req, config.ADMIN_TOKEN) }, 'admin: flush');
    res.status(202).json({ flushed: flushed.route, ...(domain !== undefined ? { domain } : {}) });
  });

  router.get('/primaries', (_req, res) => {
    const targets = Object.fromEntries(
      Object.entries(primaries.states()).map(([target, state]) => [target, { ...state, since: iso(state.since), updatedAt: iso(state.updatedAt) }]),
    );
    res.json({ targets, transitions: primaries.transitions().map((transition) => ({ ...transition, at: iso(transition.at) })) });
  });

  router.get('/status', async (_req, res) => {
    const stats = await store.stats();
    const at = now();
    const targets = Object.fromEntries(Object.entries(primaries.states()).map(([target, state]) => [target, { state: state.state, since: iso(state.since), lastError: state.lastError }]));
    res.json({
      primaries: targets,
      spool: { ...stats, oldestQueuedAt: iso(stats.oldestQueuedAt), oldestQueuedAgeSeconds: stats.oldestQueuedAt === null ? null : Math.round((at - stats.oldestQueuedAt) / 1000) },
    });
  });

  function deadLetters() {
    if (!broker.dead) throw new HttpError(501, 'this broker has no dead-letter queue');
    if (!broker.connected()) throw new HttpError(503, 'the message broker is not connected');
    return broker.dead;
  }

  router.get('/dead', async (req, res) => {
    const { limit } = parse(z.strictObject({ limit: whole(1, 1000).optional() }), req.query);
    const { total, items } = await deadLetters().list(limit ?? 100);
    res.json({ total, items: items.map((item) => ({ ...item, receivedAt: iso(item.receivedAt), deadAt: iso(item.deadAt) })) });
  });

  router.post('/dead/:id/replay', async (req, res) => {
    const id = String(req.params.id);
    if (!DEAD_ID.test(id)) throw new HttpError(400, `id: not a dead-letter id: ${JSON.stringify(id.slice(0, 80))}`);
    if (!(await deadLetters().replay(id))) throw new HttpError(404, `no dead letter ${id}`);
    log.info({ queueId: id, ...caller(req, config.ADMIN_TOKEN) }, 'admin: dead letter replayed');
    res.json({ id, replayed: true });
  });

  router.use((req, res) => {
    res.status(404).json({ error: `no such endpoint: ${req.method} ${req.baseUrl}${req.path}` });
  });

  const errors: ErrorRequestHandler = (error: unknown, _req: Request, res: Response, _next) => {
    if (error instanceof HttpError) return void res.status(error.status).json({ error: error.message });
    const type = (error as { type?: string }).type;
    if (type === 'entity.parse.failed') return void res.status(400).json({ error: 'the request body is not valid JSON' });
    if (type === 'entity.too.large') return void res.status(413).json({ error: 'the request body is too large' });
    if (type === 'encoding.unsupported' || type === 'charset.unsupported') return void res.status(415).json({ error: 'unsupported request body encoding' });
    // Express's own client errors (e.g. a malformed %-escape in the path: 400) keep their status.
    const status = (error as { status?: unknown }).status;
    if (typeof status === 'number' && status >= 400 && status < 500) return void res.status(status).json({ error: (error as Error).message });
    log.error({ err: error }, 'admin API request failed');
    if (res.headersSent) return void res.destroy();
    res.status(500).json({ error: `internal error: ${(error as Error).message}` });
  };
  router.use(errors);
  return router;
}
