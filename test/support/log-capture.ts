import { Writable } from 'node:stream';
import { pino } from 'pino';

/** A real pino logger whose JSON lines a test can read: `entries(msg)` are the parsed lines with that message. */
export function captureLog(level = 'info') {
  const lines: string[] = [];
  const log = pino({ level }, new Writable({ write: (chunk, _encoding, done) => void (lines.push(String(chunk)), done()) }));
  return {
    log,
    lines,
    entries: (msg?: string): Record<string, unknown>[] =>
      lines.map((line) => JSON.parse(line) as Record<string, unknown>).filter((entry) => msg === undefined || entry.msg === msg),
  };
}
