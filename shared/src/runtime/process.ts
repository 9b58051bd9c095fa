import { join } from 'node:path';
import { createAmqpBroker } from '../broker/amqp-broker.ts';
import type { Broker } from '../broker/broker.ts';
import { ConfigError, givenSettings, loadConfig, type Config } from './config.ts';
import { checkDataDir } from './data-dir.ts';
import type { Logger } from './logger.ts';
import { sqliteOpenFailure } from '../store/schema-version.ts';
import { openSqliteStore } from '../store/sqlite-store.ts';
import { openStoreThread } from '../store/store-thread.ts';
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

/**
 * A spool or deliverer on its own with the SQLite store works only if every spool and deliverer
 * opens the same file: refuse to guess DATA_DIR (the default, ./data, is private to each container).
 */
export function requireSharedDataDir(config: Config, service: string): void {
  if (config.MONGODB_URL || givenSettings(config).has('DATA_DIR')) return;
  process.stderr.write(
    `backupmx ${service}: configuration: DATA_DIR is required to run this service on its own with the SQLite store (every spool and deliverer must share it), or set MONGODB_URL\n`,
  );
  process.exit(78);
}

/**
 * AMQP_USER / AMQP_PASSWORD, when given, replace the URL's user and password, taken literally: a
 * password holding `@ : / % #` or a space needs no URL encoding (issue 13). The other one of the
 * pair comes from the URL (decoded, as amqplib does), else RabbitMQ's default `guest`.
 */
export function brokerCredentials(config: Pick<Config, 'AMQP_URL' | 'AMQP_USER' | 'AMQP_PASSWORD'>): { user: string; password: string } | undefined {
  if (config.AMQP_USER === undefined && config.AMQP_PASSWORD === undefined) return undefined;
  const url = new URL(config.AMQP_URL ?? 'amqp://localhost');
  const fromUrl = (text: string) => (text === '' ? 'guest' : decodeURIComponent(text));
  return { user: config.AMQP_USER ?? fromUrl(url.username), password: config.AMQP_PASSWORD ?? fromUrl(url.password) };
}

export async function connectBroker(config: Config, name: string, log: Logger): Promise<Broker> {
  const credentials = brokerCredentials(config);
  const broker = createAmqpBroker({ url: requireBroker(config, name), ...(credentials ? { credentials } : {}), name: `backupmx-${name}`, confirmTimeoutMs: config.PUBLISH_TIMEOUT, log });
  await broker.start();
  return broker;
}

/**
 * The store the configuration names. `thread`: the SQLite store runs on a thread of its own
 * (store-thread.ts), for the single process, where the SMTP sessions share the event loop and must
 * not wait behind its synchronous queries and commits. A service of its own keeps it on its loop:
 * a thread would cost it memory and CPU for little (its event loop has nothing as urgent to do).
 */
export async function openStore(config: Config, log: Logger, options: { thread?: boolean } = {}): Promise<Store> {
  if (config.MONGODB_URL) {
    const { openMongoStore } = await import('../store/mongo-store.ts');
    return openMongoStore(config.MONGODB_URL, log, { retentionMs: config.RECORD_RETENTION });
  }
  const path = join(config.DATA_DIR, 'spool.sqlite');
  checkDataDir(config.DATA_DIR, path);
  log.info({ path, thread: Boolean(options.thread) }, 'using the SQLite store');
  if (options.thread) return openStoreThread(path, log);
  try {
    return await openSqliteStore(path, { log });
  } catch (error) {
    throw new ConfigError(sqliteOpenFailure(path, error));
  }
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
