/**
 * The SQLite store's file format: the current schema, its version (PRAGMA user_version) and the
 * forward migrations from every older format (see schema-version.ts for the rule). Everything here
 * runs inside the caller's IMMEDIATE transaction: a migration that fails, or a crash during one,
 * leaves the file exactly as it was.
 *
 * Formats:
 *   1  pre-release builds (user_version 0): no envelope, trace, attempts or records; delivered
 *      deliveries were deleted.
 *   2  0.1.0: the envelope with DSN parameters, trace context, attempt history, records kept for
 *      RECORD_RETENTION, holds, delay notices, the cache.
 *   3  bodies over 1 MiB are kept in parts (body_parts), their `bodies` row empty (issue 9: a
 *      large message is never one SQLite row, which SQLite builds whole in memory). A build of
 *      format 2 would read such a body as empty, so it is refused the file.
 *   4  deliveries carry their message's received_at, indexed after route and state (deliveries_order)
 *      and alone (deliveries_age, for the expiry sweep): a claim walks the queued deliveries oldest
 *      first and stops at its limit, where it joined every claimable delivery to its message and
 *      sorted them all (issue 9). deliveries_age does not begin with state, so that the queries
 *      that find a message's deliveries by primary key are not tempted onto it.
 */
import type { DatabaseSync } from 'node:sqlite';
import { type Migration, StoreSchemaError, migrationPath } from './schema-version.ts';

export const SQLITE_SCHEMA_VERSION = 4;

/** The current format, for a new file (and the tables and indexes a migration may still lack). */
export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  id              TEXT PRIMARY KEY,
  mail_from       TEXT NOT NULL,
  recipients      TEXT NOT NULL,  -- JSON: distinct recipients, in the sender's order
  envelope        TEXT NOT NULL,  -- JSON: the Envelope as received
  size            INTEGER NOT NULL,
  received_at     INTEGER NOT NULL,
  trace           TEXT NOT NULL,  -- JSON: W3C trace context, {} when none
  delay_warned_at INTEGER
);
CREATE TABLE IF NOT EXISTS bodies (
  message_id TEXT PRIMARY KEY,
  body       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS body_parts (
  message_id TEXT NOT NULL,
  seq        INTEGER NOT NULL,
  part       BLOB NOT NULL,
  PRIMARY KEY (message_id, seq)
);
CREATE TABLE IF NOT EXISTS deliveries (
  message_id      TEXT NOT NULL,
  recipient       TEXT NOT NULL,
  route           TEXT NOT NULL,
  state           TEXT NOT NULL,  -- queued | held | delivered | failed
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at INTEGER NOT NULL,
  last_attempt_at INTEGER,
  last_reply      TEXT,
  last_next_hop   TEXT,
  settled_at      INTEGER,        -- set when delivered or failed
  lease_owner     TEXT,
  lease_until     INTEGER,
  received_at     INTEGER NOT NULL DEFAULT 0,  -- the message's (never changes): the claim order
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
CREATE INDEX IF NOT EXISTS deliveries_order ON deliveries (route, state, received_at, message_id);
CREATE INDEX IF NOT EXISTS deliveries_age ON deliveries (received_at, message_id, route);
CREATE INDEX IF NOT EXISTS deliveries_settled ON deliveries (settled_at);
CREATE INDEX IF NOT EXISTS messages_received ON messages (received_at, id);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id, seq);
CREATE INDEX IF NOT EXISTS cache_expiry ON cache (expires_at);
`;

const MIGRATIONS: Migration<DatabaseSync>[] = [
  {
    from: 1,
    what: 'messages get their envelope and trace context; failed deliveries become records; attempts and cache tables',
    up(db) {
      db.exec(`
        ALTER TABLE messages RENAME TO messages_v1;
        CREATE TABLE messages (
          id TEXT PRIMARY KEY, mail_from TEXT NOT NULL, recipients TEXT NOT NULL, envelope TEXT NOT NULL,
          size INTEGER NOT NULL, received_at INTEGER NOT NULL, trace TEXT NOT NULL, delay_warned_at INTEGER
        );
        INSERT INTO messages (id, mail_from, recipients, envelope, size, received_at, trace, delay_warned_at)
          SELECT id, mail_from, recipients, json_object('mailFrom', mail_from, 'rcptTo', json(recipients)), size, received_at, '{}', NULL
          FROM messages_v1;
        DROP TABLE messages_v1;
        ALTER TABLE deliveries ADD COLUMN last_next_hop TEXT;
        ALTER TABLE deliveries ADD COLUMN settled_at INTEGER;
        UPDATE deliveries SET settled_at = COALESCE(last_attempt_at, next_attempt_at) WHERE state = 'failed';
        DELETE FROM bodies WHERE message_id NOT IN (SELECT message_id FROM deliveries WHERE state = 'queued');
      `);
    },
  },
  {
    from: 2,
    what: 'large bodies may be kept in parts (table body_parts)',
    up(db) {
      db.exec('CREATE TABLE IF NOT EXISTS body_parts (message_id TEXT NOT NULL, seq INTEGER NOT NULL, part BLOB NOT NULL, PRIMARY KEY (message_id, seq))');
    },
  },
  {
    from: 3,
    what: "deliveries carry their message's received_at (claims walk them in that order); its indexes",
    up(db) {
      // A delivery always has its message (put and remove write both in one transaction); were one
      // ever without, it keeps its first schedule as its age rather than failing the migration.
      db.exec(`
        ALTER TABLE deliveries ADD COLUMN received_at INTEGER NOT NULL DEFAULT 0;
        UPDATE deliveries SET received_at = COALESCE((SELECT m.received_at FROM messages m WHERE m.id = deliveries.message_id), next_attempt_at);
      `);
    },
  },
];

function columns(db: DatabaseSync, table: string): string[] {
  return (db.prepare('SELECT name FROM pragma_table_info(?)').all(table) as { name: string }[]).map((c) => c.name);
}

/** The file's format: its user_version, 1 for the unversioned pre-release format, null for an empty file. */
function storedVersion(db: DatabaseSync, where: string): number | null {
  const { user_version: version } = db.prepare('PRAGMA user_version').get() as { user_version: number };
  if (version !== 0) return version;
  const tables = (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).all() as { name: string }[]).map((t) => t.name);
  if (tables.length === 0) return null;
  const v1 = ['messages', 'bodies', 'deliveries'].every((t) => tables.includes(t)) && !columns(db, 'messages').includes('envelope');
  if (v1) return 1;
  throw new StoreSchemaError(`${where}: not a backupmx store (tables ${tables.join(', ')}, no schema version); the file was left unchanged`);
}

/** What a migration must keep: every message, every queued or held delivery, the body of each message that has one. */
function pending(db: DatabaseSync): string {
  const count = (sql: string) => (db.prepare(sql).get() as { n: number }).n;
  return JSON.stringify({
    messages: count('SELECT COUNT(*) AS n FROM messages'),
    deliveries: count(`SELECT COUNT(*) AS n FROM deliveries WHERE state IN ('queued', 'held')`),
    bodies: count(`SELECT COUNT(DISTINCT b.message_id) AS n FROM bodies b JOIN deliveries d ON d.message_id = b.message_id WHERE d.state IN ('queued', 'held')`),
  });
}

/** Refuse (StoreSchemaError) a file this build cannot use, before anything is written to it. */
export function checkSchema(db: DatabaseSync, where: string): void {
  // One snapshot for both of storedVersion's reads: a process creating the schema of a new file
  // meanwhile (compose starts the services together on one new volume) must not be seen half:
  // its tables, but, read a moment before, no version yet ("not a backupmx store", exit 78).
  db.exec('BEGIN DEFERRED');
  try {
    const from = storedVersion(db, where);
    if (from !== null) migrationPath(from, SQLITE_SCHEMA_VERSION, MIGRATIONS, where);
  } finally {
    if (db.isTransaction) db.exec('COMMIT');
  }
}

/**
 * Create the schema in an empty file, or bring an older one forward to SQLITE_SCHEMA_VERSION. Call
 * inside an IMMEDIATE transaction. Throws StoreSchemaError (one line) for a newer or foreign file.
 * Returns the version found (null: new file) and the steps run.
 */
export function prepareSchema(db: DatabaseSync, where: string): { from: number | null; steps: string[] } {
  const from = storedVersion(db, where);
  const steps = from === null ? [] : migrationPath(from, SQLITE_SCHEMA_VERSION, MIGRATIONS, where);
  const before = steps.length > 0 ? pending(db) : '';
  for (const step of steps) {
    try {
      step.up(db);
    } catch (error) {
      throw new StoreSchemaError(`${where}: migration from store schema ${step.from} to ${step.from + 1} failed, the file was left unchanged: ${(error as Error).message}`);
    }
  }
  db.exec(SCHEMA);
  if (steps.length > 0) {
    const after = pending(db);
    if (after !== before) throw new StoreSchemaError(`${where}: migration from store schema ${from} would lose queued mail (before ${before}, after ${after}); the file was left unchanged`);
  }
  db.exec(`PRAGMA user_version = ${SQLITE_SCHEMA_VERSION}`);
  return { from, steps: steps.map((s) => `${s.from}->${s.from + 1}: ${s.what}`) };
}
