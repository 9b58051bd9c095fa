import { pino, type Logger } from 'pino';

export type { Logger };

/** JSON logs, one event per line, on stdout; `service` names the emitter. */
export function createLogger(service: string, level: string = process.env.LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { service, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
