/**
 * The embedded store adapter: one SQLite file (node:sqlite), shared by several processes.
 * WAL + synchronous=FULL makes every committed write durable; BEGIN IMMEDIATE takes the write lock
 * up front, so a claim's select-and-lease is atomic across processes.
 */
import { Buffer } from 'node:buffer';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Readable } from 'node:stream';
import type { ClaimOptions, QueueStats, Store } from './store.ts';
import type { ClaimedMessage, Delivery, DeliveryState, MessageInfo, Outcome, ReceivedMail } from './types.ts';

const BUSY_TIMEOUT_MS = 10_000;

const SCHEMA = `
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

interface MessageRow {
  id: string;
  mail_from: string;
  recipients: string;
  size: number;
  received_at: number;
}

interface DeliveryRow {
  message_id: string;
  recipient: string;
  route: string;
  state: string;
  attempts: number;
  next_attempt_at: number;
  last_attempt_at: number | null;
  last_reply: string | null;
}

function toMessage(row: MessageRow): MessageInfo {
  return {
    id: row.id,
    mailFrom: row.mail_from,
    recipients: JSON.parse(row.recipients) as string[],
    size: row.size,
    receivedAt: row.received_at,
  };
}

function toDelivery(row: DeliveryRow): Delivery {
  return {
    messageId: row.message_id,
    recipient: row.recipient,
    route: row.route,
    state: row.state as DeliveryState,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    lastAttemptAt: row.last_attempt_at,
    lastReply: row.last_reply,
  };
}

/** Deliveries in the order of the message's recipients. */
function inRecipientOrder(message: MessageInfo, deliveries: Delivery[]): Delivery[] {
  const index = new Map(message.recipients.map((r, i) => [r, i]));
  return deliveries.sort((a, b) => (index.get(a.recipient) ?? 0) - (index.get(b.recipient) ?? 0));
}

/** Open (creating when missing) the store file at `path`. */
export async function openSqliteStore(path: string): Promise<Store> {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path, { timeout: BUSY_TIMEOUT_MS });
  let open = true;

  function tx<T>(fn: () => T): T {
    db.exec('BEGIN IMMEDIATE');
    try {
      const result = fn();
      db.exec('COMMIT');
      return result;
    } catch (err) {
      if (db.isTransaction) db.exec('ROLLBACK');
      throw err;
    }
  }

  try {
    db.exec('PRAGMA journal_mode = WAL');
    db.exec('PRAGMA synchronous = FULL');
    tx(() => db.exec(SCHEMA));
  } catch (err) {
    db.close();
    throw err;
  }

  const q = {
    insertMessage: db.prepare(
      'INSERT OR IGNORE INTO messages (id, mail_from, recipients, size, received_at) VALUES (?, ?, ?, ?, ?)',
    ),
    insertBody: db.prepare('INSERT INTO bodies (message_id, body) VALUES (?, ?)'),
    insertDelivery: db.prepare(
      `INSERT INTO deliveries (message_id, recipient, route, state, attempts, next_attempt_at)
       VALUES (?, ?, ?, 'queued', 0, ?)`,
    ),
    claimable: db.prepare(
      `SELECT d.message_id AS id FROM deliveries d JOIN messages m ON m.id = d.message_id
       WHERE d.route = :route AND d.state = 'queued' AND d.next_attempt_at <= :dueBy
         AND (d.lease_until IS NULL OR d.lease_until <= :now)
         AND (:notAttemptedSince IS NULL OR d.last_attempt_at IS NULL OR d.last_attempt_at < :notAttemptedSince)
       GROUP BY d.message_id
       ORDER BY m.received_at, d.message_id
       LIMIT :limit`,
    ),
    lease: db.prepare(
      `UPDATE deliveries SET lease_owner = :owner, lease_until = :leaseUntil
       WHERE message_id = :messageId AND route = :route AND state = 'queued'
         AND next_attempt_at <= :dueBy
         AND (lease_until IS NULL OR lease_until <= :now)
         AND (:notAttemptedSince IS NULL OR last_attempt_at IS NULL OR last_attempt_at < :notAttemptedSince)
       RETURNING message_id, recipient, route, state, attempts, next_attempt_at, last_attempt_at, last_reply`,
    ),
    message: db.prepare('SELECT id, mail_from, recipients, size, received_at FROM messages WHERE id = ?'),
    deliveries: db.prepare(
      `SELECT message_id, recipient, route, state, attempts, next_attempt_at, last_attempt_at, last_reply
       FROM deliveries WHERE message_id = ?`,
    ),
    body: db.prepare('SELECT body FROM bodies WHERE message_id = ?'),
    settleDelivered: db.prepare(
      `DELETE FROM deliveries WHERE message_id = ? AND recipient = ? AND state = 'queued' AND lease_owner = ?`,
    ),
    settleDeferred: db.prepare(
      `UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?, last_reply = ?, next_attempt_at = ?,
         lease_owner = NULL, lease_until = NULL
       WHERE message_id = ? AND recipient = ? AND state = 'queued' AND lease_owner = ?`,
    ),
    settleFailed: db.prepare(
      `UPDATE deliveries SET state = 'failed', attempts = attempts + 1, last_attempt_at = ?, last_reply = ?,
         lease_owner = NULL, lease_until = NULL
       WHERE message_id = ? AND recipient = ? AND state = 'queued' AND lease_owner = ?`,
    ),
    remaining: db.prepare('SELECT COUNT(*) AS n FROM deliveries WHERE message_id = ?'),
    deleteMessage: db.prepare('DELETE FROM messages WHERE id = ?'),
    deleteBody: db.prepare('DELETE FROM bodies WHERE message_id = ?'),
    routes: db.prepare(`SELECT DISTINCT route FROM deliveries WHERE state = 'queued' ORDER BY route`),
    nextDue: db.prepare(`SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE route = ? AND state = 'queued'`),
    queuedByRoute: db.prepare(`SELECT route, COUNT(*) AS n FROM deliveries WHERE state = 'queued' GROUP BY route`),
    failedCount: db.prepare(`SELECT COUNT(*) AS n FROM deliveries WHERE state = 'failed'`),
    messageCount: db.prepare('SELECT COUNT(*) AS n FROM messages'),
    oldestQueued: db.prepare(
      `SELECT MIN(m.received_at) AS t FROM messages m
       WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state = 'queued')`,
    ),
  };

  function readMessage(id: string): MessageInfo | null {
    const row = q.message.get(id) as MessageRow | undefined;
    return row ? toMessage(row) : null;
  }

  function assertOpen(): void {
    if (!open) throw new Error('sqlite store is closed');
  }

  return {
    async put(mail: ReceivedMail, routes: Record<string, string>): Promise<boolean> {
      assertOpen();
      const recipients = [...new Set(mail.envelope.rcptTo)];
      for (const r of recipients) {
        if (typeof routes[r] !== 'string') throw new Error(`no route for recipient ${r} of message ${mail.id}`);
      }
      return tx(() => {
        const inserted = q.insertMessage.run(
          mail.id,
          mail.envelope.mailFrom,
          JSON.stringify(recipients),
          mail.body.length,
          mail.receivedAt,
        );
        if (Number(inserted.changes) === 0) return false;
        q.insertBody.run(mail.id, mail.body);
        for (const r of recipients) q.insertDelivery.run(mail.id, r, routes[r] as string, mail.receivedAt);
        return true;
      });
    },

    async claim(o: ClaimOptions): Promise<ClaimedMessage[]> {
      assertOpen();
      const filter = {
        route: o.route,
        now: o.now,
        dueBy: o.ignoreSchedule ? Number.MAX_SAFE_INTEGER : o.now,
        notAttemptedSince: o.notAttemptedSince ?? null,
      };
      return tx(() => {
        const ids = q.claimable.all({ ...filter, limit: o.limit }) as unknown as { id: string }[];
        const claimed: ClaimedMessage[] = [];
        for (const { id } of ids) {
          const message = readMessage(id);
          if (!message) continue;
          const rows = q.lease.all({ ...filter, messageId: id, owner: o.owner, leaseUntil: o.now + o.leaseMs });
          const deliveries = (rows as unknown as DeliveryRow[]).map(toDelivery);
          if (deliveries.length > 0) {
            claimed.push({ message, route: o.route, deliveries: inRecipientOrder(message, deliveries) });
          }
        }
        return claimed;
      });
    },

    async settle(messageId: string, owner: string, outcomes: Outcome[], now: number): Promise<void> {
      assertOpen();
      tx(() => {
        for (const o of outcomes) {
          if (o.result === 'delivered') {
            q.settleDelivered.run(messageId, o.recipient, owner);
          } else if (o.result === 'deferred') {
            q.settleDeferred.run(now, o.reply, o.nextAttemptAt, messageId, o.recipient, owner);
          } else {
            q.settleFailed.run(now, o.reply, messageId, o.recipient, owner);
          }
        }
        const { n } = q.remaining.get(messageId) as { n: number };
        if (n === 0) {
          q.deleteBody.run(messageId);
          q.deleteMessage.run(messageId);
        }
      });
    },

    async readBody(messageId: string): Promise<Readable> {
      assertOpen();
      const row = q.body.get(messageId) as { body: Uint8Array } | undefined;
      if (!row) throw new Error(`message ${messageId} is not in the store`);
      const body = Buffer.from(row.body.buffer, row.body.byteOffset, row.body.byteLength);
      return Readable.from([body], { objectMode: false });
    },

    async getMessage(messageId: string) {
      assertOpen();
      const message = readMessage(messageId);
      if (!message) return null;
      const deliveries = (q.deliveries.all(messageId) as unknown as DeliveryRow[]).map(toDelivery);
      return { message, deliveries: inRecipientOrder(message, deliveries) };
    },

    async routes(): Promise<string[]> {
      assertOpen();
      return (q.routes.all() as unknown as { route: string }[]).map((r) => r.route);
    },

    async nextDue(route: string): Promise<number | null> {
      assertOpen();
      return (q.nextDue.get(route) as { t: number | null }).t;
    },

    async stats(): Promise<QueueStats> {
      assertOpen();
      const queued: Record<string, number> = {};
      for (const r of q.queuedByRoute.all() as unknown as { route: string; n: number }[]) queued[r.route] = r.n;
      return {
        queued,
        failed: (q.failedCount.get() as { n: number }).n,
        messages: (q.messageCount.get() as { n: number }).n,
        oldestQueuedAt: (q.oldestQueued.get() as { t: number | null }).t,
      };
    },

    ready(): boolean {
      return open && db.isOpen;
    },

    async close(): Promise<void> {
      if (!open) return;
      open = false;
      db.close();
    },
  };
}
