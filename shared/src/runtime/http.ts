import type { Server } from 'node:http';
import express, { type Express } from 'express';
import type { Logger } from './logger.ts';
import { followReadiness, readiness, registry, scrape } from './metrics.ts';
import { listenError } from './config.ts';

export type ReadinessCheck = () => Record<string, boolean>;

/**
 * Each service's HTTP port: GET /healthz (the process is alive), GET /readyz (its broker and store
 * are connected: 200, else 503 naming what is not), GET /metrics (Prometheus), plus whatever
 * `routes` adds.
 */
export function startHttp(options: {
  host: string;
  port: number;
  log: Logger;
  ready: ReadinessCheck;
  /** Why a check fails, in words, added to /readyz as `detail` (e.g. disk: refusing new mail ...). */
  detail?: () => Record<string, string>;
  routes?: (app: Express) => void;
}): Promise<Server> {
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', (_req, res) => {
    const checks = options.ready();
    const ok = Object.values(checks).every(Boolean);
    const detail = options.detail?.() ?? {};
    res.status(ok ? 200 : 503).json({ status: ok ? 'ready' : 'not ready', checks, ...(Object.keys(detail).length ? { detail } : {}) });
  });
  app.get('/metrics', async (_req, res) => {
    for (const [check, ok] of Object.entries(options.ready())) readiness.set({ check }, ok ? 1 : 0);
    res.type(registry.contentType).send(await scrape());
  });
  options.routes?.(app);
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  return new Promise((resolve, reject) => {
    const server = app.listen(options.port, options.host, (error?: Error) => {
      if (error) return reject(listenError('HTTP_PORT', options.host, options.port, error));
      server.once('close', followReadiness(options.ready));
      options.log.info({ address: server.address() }, 'http listening');
      resolve(server);
    });
  });
}

export function closeHttp(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
