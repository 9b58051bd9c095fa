/**
 * Store files in the formats earlier builds wrote, made by hand (node:sqlite), for the migration
 * tests. Each format is a frozen copy of what that build created: never edit one; when a format
 * changes, add the next one here (and its migration in shared/src/store/sqlite-schema.ts).
 */
import { Buffer } from 'node:buffer';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';

/** One message as a test wants it stored: recipients with their state in that build's terms. */
export interface OldMessage {
  id: string;
  from: string;
  receivedAt: number;
  body: Buffer;
  recipients: Array<{
    address: string;
    route: string;
    state: 'queued' | 'held' | 'delivered' | 'failed';
    attempts?: number;
    nextAttemptAt?: number;
    lastAttemptAt?: number;
    lastReply?: string;
  }>;
}

/** Format 1 (pre-release, user_version 0): delivered deliveries were deleted, failed ones kept with their body. */
const V1 = `
CREATE TABLE IF NOT EXISTS messages (
  id          TEXT PRIMARY KEY,
  mail_from   TEXT NOT NULL,
  recipients  TEXT NOT NULL,
  size        INTEGER NOT NULL,
  received_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bodies (
  message_id TEXT PRIMARY KEY,
  body       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
  message_id      TEXT NOT NULL,
  recipient       TEXT NOT NULL,
  route           TEXT NOT NULL,
  state           TEXT NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_attempt_at INTEGER,
  last_reply      TEXT,
  lease_owner     TEXT,
  lease_until     INTEGER,
  PRIMARY KEY (message_id, recipient)
);
CREATE INDEX IF NOT EXISTS deliveries_claim ON deliveries (route, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at);
`;

export function writeSqliteV1(path: string, messages: OldMessage[]): void {
  mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path);
  db.exec('PRAGMA journal_mode = WAL');
  db.exec(V1);
  for (const m of messages) {
    const recipients = m.recipients.map((r) => r.address);
    db.prepare('INSERT INTO messages VALUES (?, ?, ?, ?, ?)').run(m.id, m.from, JSON.stringify(recipients), m.body.length, m.receivedAt);
    db.prepare('INSERT INTO bodies VALUES (?, ?)').run(m.id, m.body);
    for (const r of m.recipients) {
      if (r.state === 'delivered') continue; // format 1 deleted them
      if (r.state === 'held') throw new Error('format 1 had no held deliveries');
      db.prepare(
        'INSERT INTO deliveries (message_id, recipient, route, state, attempts, next_attempt_at, last_attempt_at, last_reply) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ).run(m.id, r.address, r.route, r.state, r.attempts ?? 0, r.nextAttemptAt ?? m.receivedAt, r.lastAttemptAt ?? null, r.lastReply ?? null);
    }
  }
  db.close();
}

/** Format 2 (0.1.0, user_version 2). */
const V2 = `
CREATE TABLE IF NOT EXISTS messages (
  id              TEXT PRIMARY KEY,
  mail_from       TEXT NOT NULL,
  recipients      TEXT NOT NULL,
  envelope        TEXT NOT NULL,
  size            INTEGER NOT NULL,
  received_at     INTEGER NOT NULL,
  trace           TEXT NOT NULL,
  delay_warned_at INTEGER
);
CREATE TABLE IF NOT EXISTS bodies (
  message_id TEXT PRIMARY KEY,
  body       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
  message_id      TEXT NOT NULL,
  recipient       TEXT NOT NULL,
  route           TEXT NOT NULL,
  state           TEXT NOT NULL,
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_attempt_at INTEGER,
  last_reply      TEXT,
  last_next_hop   TEXT,
  settled_at      INTEGER,
  lease_owner     TEXT,
  lease_until     INTEGER,
  PRIMARY KEY (message_id, recipient)
);
CREATE TABLE IF NOT EXISTS attempts (
  seq        INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
  recipient  TEXT NOT NULL,
  at         INTEGER NOT NULL,
  next_hop   TEXT,
  result     TEXT NOT NULL,
  reply      TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cache (
  key        TEXT PRIMARY KEY,
  value      TEXT NOT NULL,
  expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_claim ON deliveries (route, state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_settled ON deliveries (settled_at);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at, id);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id, seq);
CREATE INDEX IF NOT EXISTS cache_expiry ON cache (expires_at);
`;

/** Format 2 (0.1.0, user_version 2). */
export function writeSqliteV2(path: string, messages: OldMessage[]): void {
  writeV2orV3(V2, 2, path, messages);
}

/** Format 3 (issue 9: bodies over 1 MiB in parts, user_version 3): format 2 and the table body_parts. */
const V3 = `${V2}
CREATE TABLE IF NOT EXISTS body_parts (
  message_id TEXT NOT NULL,
  seq        INTEGER NOT NULL,
  part       BLOB NOT NULL,
  PRIMARY KEY (message_id, seq)
);
`;

/** `version` other than 3: the same tables under another user_version (a file from a newer build). */
export function writeSqliteV3(path: string, messages: OldMessage[], options: { version?: number; journal?: 'WAL' | 'DELETE' } = {}): void {
  writeV2orV3(V3, options.version ?? 3, path, messages, options.journal);
}

/** Formats 2 and 3 store a message alike (the test bodies are small: no parts). */
function writeV2orV3(schema: string, version: number, path: string, messages: OldMessage[], journal: 'WAL' | 'DELETE' = 'WAL'): void {
  mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path);
  db.exec(`PRAGMA journal_mode = ${journal}`);
  db.exec(schema);
  for (const m of messages) {
    const recipients = m.recipients.map((r) => r.address);
    const envelope = { mailFrom: m.from, rcptTo: recipients, clientHelo: 'client.origin.test', clientAddress: '192.0.2.7' };
    db.prepare('INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, NULL)').run(m.id, m.from, JSON.stringify(recipients), JSON.stringify(envelope), m.body.length, m.receivedAt, '{}');
    const pending = m.recipients.some((r) => r.state === 'queued' || r.state === 'held');
    if (pending) db.prepare('INSERT INTO bodies VALUES (?, ?)').run(m.id, m.body);
    for (const r of m.recipients) {
      const settled = r.state === 'delivered' || r.state === 'failed' ? (r.lastAttemptAt ?? m.receivedAt) : null;
      db.prepare(
        `INSERT INTO deliveries (message_id, recipient, route, state, attempts, next_attempt_at, last_attempt_at, last_reply, last_next_hop, settled_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      ).run(m.id, r.address, r.route, r.state, r.attempts ?? 0, r.nextAttemptAt ?? m.receivedAt, r.lastAttemptAt ?? null, r.lastReply ?? null, r.lastReply ? r.route : null, settled);
      if (r.lastAttemptAt !== undefined) {
        const result = r.state === 'queued' || r.state === 'held' ? 'deferred' : r.state;
        db.prepare('INSERT INTO attempts (message_id, recipient, at, next_hop, result, reply) VALUES (?, ?, ?, ?, ?, ?)').run(m.id, r.address, r.lastAttemptAt, r.route, result, r.lastReply ?? '');
      }
    }
  }
  db.exec(`PRAGMA user_version = ${version}`);
  db.close();
}
