import { join } from 'node:path';
import { createAmqpBroker } from '../broker/amqp-broker.ts';
import type { Broker } from '../broker/broker.ts';
import { ConfigError, loadConfig, type Config } from './config.ts';
import type { Logger } from './logger.ts';
import { openSqliteStore } from '../store/sqlite-store.ts';
import type { Store } from '../store/store.ts';
import { flushTelemetry } from './telemetry.ts';

/** Load the configuration, or print one line naming the bad key and exit 78 (EX_CONFIG). */
export function configOrExit(service: string): Config {
  // A setting that turns out wrong only at start-up (a port in use, MongoDB unreachable) is thrown
  // as a ConfigError from the entry point's top-level await: one line naming the key, exit 78.
  process.on('uncaughtException', (error) => {
    if (error instanceof ConfigError) {
      process.stderr.write(`backupmx ${service}: configuration: ${error.message}\n`);
      process.exit(78);
    }
    process.stderr.write(`backupmx ${service}: ${error.stack ?? String(error)}\n`);
    process.exit(1);
  });
  try {
    return loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`backupmx ${service}: configuration: ${error.message}\n`);
    process.exit(78);
  }
}

/** A service started on its own needs RabbitMQ; say so in one line and exit. */
export function requireBroker(config: Config, service: string): string {
  if (config.AMQP_URL) return config.AMQP_URL;
  process.stderr.write(
    `backupmx ${service}: configuration: AMQP_URL is required to run this service on its own (or run every service in one process with "npm start")\n`,
  );
  process.exit(78);
}

export async function connectBroker(config: Config, name: string, log: Logger): Promise<Broker> {
  const broker = createAmqpBroker({ url: requireBroker(config, name), name: `backupmx-${name}`, confirmTimeoutMs: config.PUBLISH_TIMEOUT, log });
  await broker.start();
  return broker;
}

export async function openStore(config: Config, log: Logger): Promise<Store> {
  if (config.MONGODB_URL) {
    const { openMongoStore } = await import('../store/mongo-store.ts');
    return openMongoStore(config.MONGODB_URL, log, { retentionMs: config.RECORD_RETENTION });
  }
  const path = join(config.DATA_DIR, 'spool.sqlite');
  log.info({ path }, 'using the SQLite store');
  return openSqliteStore(path);
}

/**
 * SIGTERM / SIGINT: run `stop` (stop taking work, finish what is in flight) and exit 0; exit 1 if it
 * takes longer than `graceMs` (the orchestrator's kill comes at 30 s).
 */
export function onShutdown(log: Logger, stop: () => Promise<void>, graceMs = 25_000): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    const timer = setTimeout(() => {
      log.error('shutdown took too long; exiting');
      process.exit(1);
    }, graceMs);
    timer.unref();
    // Buffered spans are exported before the process ends (a no-op without tracing).
    stop().then(flushTelemetry).then(
      () => {
        log.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
}
