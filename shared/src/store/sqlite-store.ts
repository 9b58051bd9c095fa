/**
 * The embedded store adapter: one SQLite file (node:sqlite), shared by several processes.
 * WAL with synchronous=NORMAL, and every write resolves only after an fdatasync of the WAL that
 * started after its COMMIT (group-commit.ts, wal-sync.ts: the sync runs off the event loop); BEGIN
 * IMMEDIATE takes the write lock up front, so a claim's select-and-lease is atomic across processes.
 * Reads that span several statements run in one (deferred) transaction, so they see one snapshot.
 * put, claim and settle, the writes of the mail path, are group-committed: those arriving in one
 * turn of the event loop share one COMMIT, and the commits made while a sync runs share the next.
 */
import { Buffer } from 'node:buffer';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Readable } from 'node:stream';
import type { Logger } from '../runtime/logger.ts';
import { passedThrough } from '../runtime/young-gc.ts';
import { groupCommit } from './group-commit.ts';
import { openWalSync, type WalSync } from './wal-sync.ts';
import { checkSchema, prepareSchema, SQLITE_SCHEMA_VERSION } from './sqlite-schema.ts';
import { type Activity, type BulkAction, type BulkResult, type ClaimOptions, type LeaseRef, type ListFilter, type MessageDetail, type MessageSummary, type QueueStats, type Store, routedRecipients } from './store.ts';
import type { AttemptRecord, ClaimedMessage, Delivery, DeliveryState, MessageInfo, Outcome, ReceivedMail } from '../types.ts';

const BUSY_TIMEOUT_MS = 10_000;

/** SQLITE_BUSY, extended codes included: another connection holds the lock. */
function locked(error: unknown): boolean {
  const code = (error as { errcode?: unknown }).errcode;
  return typeof code === 'number' && (code & 0xff) === 5;
}

/** Run `fn` again (after a few ms) while it fails with SQLITE_BUSY, up to BUSY_TIMEOUT_MS. */
async function untilUnlocked<T>(fn: () => T): Promise<T> {
  const deadline = Date.now() + BUSY_TIMEOUT_MS;
  for (;;) {
    try {
      return fn();
    } catch (error) {
      if (!locked(error) || Date.now() >= deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 10 + Math.random() * 40));
    }
  }
}
/**
 * How long a settle may wait for other writes to share its commit. The primary already has the mail;
 * a crash in this window delivers it again (at-least-once: the duplicate window of DESIGN.md grows by
 * this and the sync after it). Still worth it with the sync off the event loop, though commits are
 * cheap now: the bench's flush ran at 172-249 msg/s with 0 against 397-721 with 10 (alternate runs),
 * because with its settles done one by one the deliverer claimed more often and in smaller batches
 * (234 claims taking 4.3 s against 150 taking 2.2 s), and each claim sorted the backlog then (store format 3).
 */
const SETTLE_WITHIN_MS = 10;

/**
 * How long a put may wait for other puts to share its commit and its sync. The sender waits for
 * the sync anyway; with the sync as fast as it is on a local disk (0.4 ms for 48 KB here) the
 * sessions' puts came one per commit, and a commit of one message cost about 270 us of CPU against
 * 65 us each in groups of 20, on the one thread that also runs every SMTP session. `npm run bench --
 * --mode one` (2 rounds each, same hour): accept CPU 1.17-1.33 ms per message with 0, 1.07 with 2,
 * 0.98-0.99 with 5, 0.92 with 10; accept 749-789 msg/s with 0, 930-1,085 with 5, 840 with 10 (the
 * 20 sessions then wait on the window). Nothing about durability changes: the reply still waits for
 * the sync that covers the commit.
 */
const PUT_WITHIN_MS = 5;
/** An ordinary claim of `limit` messages looks at this many times as many queued deliveries before it sorts the due ones (see claimWindow). */
const CLAIM_WINDOW = 4;
/** Messages changed per transaction by bulk(). */
const BULK_CHUNK = 500;
/** Bodies larger than this are stored in parts of this size (see insertBody). */
export const BODY_PART_SIZE = 1024 * 1024;
const EMPTY = Buffer.alloc(0);
const MESSAGE_COLUMNS = 'id, mail_from, recipients, envelope, size, received_at, trace, delay_warned_at';
const DELIVERY_COLUMNS =
  'message_id, recipient, route, state, attempts, next_attempt_at, last_attempt_at, last_reply, last_next_hop, settled_at';

/**
 * A delivery that may be leased now: queued, due (or the flush / expiry options), lease free or expired.
 * `d` prefixes the columns: '+d.' where the rows are found by primary key, as the unary + keeps
 * SQLite from walking an index on (route, state) instead (it has no statistics to know better:
 * the lease did, walking the route's whole due backlog for each message it leased).
 */
const claimableAs = (d: string) => `${d}state = 'queued' AND ${d}next_attempt_at <= :dueBy
  AND (${d}lease_until IS NULL OR ${d}lease_until <= :now)
  AND (:notAttemptedSince IS NULL OR ${d}last_attempt_at IS NULL OR ${d}last_attempt_at < :notAttemptedSince)`;
const CLAIMABLE = claimableAs('d.');

/** The list filter; a null parameter does not filter. */
const LISTED = `(:receivedBefore IS NULL OR m.received_at <= :receivedBefore)
  AND (:sender IS NULL OR (:sender = '<>' AND m.mail_from = '') OR instr(lower(m.mail_from), lower(:sender)) > 0)
  AND ((:states IS NULL AND :domain IS NULL AND :recipient IS NULL) OR EXISTS (
        SELECT 1 FROM deliveries d WHERE d.message_id = m.id
          AND (:states IS NULL OR d.state IN (SELECT value FROM json_each(:states)))
          AND (:domain IS NULL OR lower(substr(d.recipient, -length(:domain) - 1)) = '@' || lower(:domain))
          AND (:recipient IS NULL OR instr(lower(d.recipient), lower(:recipient)) > 0)))`;

interface MessageRow {
  id: string;
  mail_from: string;
  recipients: string;
  envelope: string;
  size: number;
  received_at: number;
  trace: string;
  delay_warned_at: number | null;
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
  last_next_hop: string | null;
  settled_at: number | null;
}

function toMessage(row: MessageRow): MessageInfo {
  return {
    id: row.id,
    mailFrom: row.mail_from,
    recipients: JSON.parse(row.recipients) as string[],
    envelope: JSON.parse(row.envelope) as MessageInfo['envelope'],
    size: row.size,
    receivedAt: row.received_at,
    trace: JSON.parse(row.trace) as Record<string, string>,
    delayWarnedAt: row.delay_warned_at,
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
    lastNextHop: row.last_next_hop,
    settledAt: row.settled_at,
  };
}

/** Deliveries in the order of the message's recipients. */
function inRecipientOrder(message: MessageInfo, deliveries: Delivery[]): Delivery[] {
  const index = new Map(message.recipients.map((r, i) => [r, i]));
  return deliveries.sort((a, b) => (index.get(a.recipient) ?? 0) - (index.get(b.recipient) ?? 0));
}

/**
 * Open (creating when missing) the store file at `path`. A file written by an older build is
 * migrated forward first (sqlite-schema.ts), in one transaction; a newer one is refused, untouched.
 */
export async function openSqliteStore(
  path: string,
  /** `sync`: in place of the fdatasync of the WAL (tests hold it back or make it fail). */
  options: { log?: Logger; sync?: () => Promise<void> } = {},
): Promise<Store> {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new DatabaseSync(path, { timeout: BUSY_TIMEOUT_MS });
  let open = true;
  let wal: WalSync | null = null;

  /** Run fn in one transaction: IMMEDIATE (write lock up front) for writes, DEFERRED for reads. */
  function tx<T>(fn: () => T, mode: 'IMMEDIATE' | 'DEFERRED' = 'IMMEDIATE'): T {
    db.exec(`BEGIN ${mode}`);
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
    // Processes opening a new file at the same moment (compose starts the spool, the deliverers and
    // ingress together on one new volume) can get "database is locked" at once, without SQLite's
    // busy timeout, while another one turns the file to WAL: each step is safe to repeat, so try
    // again for as long as the busy timeout (6 processes at once: 1 run in 4 failed so, exit 78).
    const { from, steps } = await untilUnlocked(() => {
      checkSchema(db, path); // a newer or foreign file is refused before WAL mode changes its header
      db.exec('PRAGMA journal_mode = WAL');
      db.exec('PRAGMA synchronous = FULL');
      return tx(() => prepareSchema(db, path));
    });
    if (steps.length > 0) options.log?.info({ path, from, to: SQLITE_SCHEMA_VERSION, steps }, 'store migrated to the current schema');
    // From here on a COMMIT does not sync; the group commit syncs the WAL before anyone is answered.
    db.exec('PRAGMA synchronous = NORMAL');
    wal = path === ':memory:' || options.sync ? null : openWalSync(path);
  } catch (err) {
    db.close();
    throw err;
  }

  const sync = options.sync ?? wal?.sync;
  const group = groupCommit(db, {
    sync: sync && (() => sync().catch((err: unknown) => {
      options.log?.error({ err, path }, 'store: syncing the WAL to disk failed; no write is acknowledged until the process restarts');
      throw err;
    })),
  });

  /** A write that runs its own transaction (admin actions, delay warnings, purge): resolved once synced. */
  async function durable<T>(fn: () => T): Promise<T> {
    const result = tx(fn);
    await group.synced();
    return result;
  }

  const q = {
    insertMessage: db.prepare(
      `INSERT OR IGNORE INTO messages (${MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)`,
    ),
    insertBody: db.prepare('INSERT INTO bodies (message_id, body) VALUES (?, ?)'),
    insertPart: db.prepare('INSERT INTO body_parts (message_id, seq, part) VALUES (?, ?, ?)'),
    part: db.prepare('SELECT part FROM body_parts WHERE message_id = ? AND seq = ?'),
    partCount: db.prepare('SELECT COUNT(*) AS n FROM body_parts WHERE message_id = ?'),
    deleteParts: db.prepare('DELETE FROM body_parts WHERE message_id = ?'),
    insertDelivery: db.prepare(
      `INSERT INTO deliveries (message_id, recipient, route, state, attempts, next_attempt_at, received_at)
       VALUES (?, ?, ?, 'queued', 0, ?, ?)`,
    ),
    // Claims walk the queued deliveries in claim order (deliveries_order, deliveries_age: store
    // format 4) and stop at the limit; they used to join every claimable delivery to its message
    // and sort them all, at every claim (issue 9). A flush or the expiry sweep claims what is first.
    claimableOfRoute: db.prepare(
      `SELECT d.message_id AS id, d.route FROM deliveries d INDEXED BY deliveries_order
       WHERE d.route = :route AND ${CLAIMABLE}
         AND d.received_at < :receivedBefore
       GROUP BY d.received_at, d.message_id ORDER BY d.received_at, d.message_id LIMIT :limit`,
    ),
    claimableOfAny: db.prepare(
      `SELECT d.message_id AS id, d.route FROM deliveries d INDEXED BY deliveries_age
       WHERE ${CLAIMABLE}
         AND d.received_at < :receivedBefore
       GROUP BY d.received_at, d.message_id, d.route ORDER BY d.received_at, d.message_id, d.route LIMIT :limit`,
    ),
    // An ordinary claim would walk past every delivery deferred to later (a backlog the primary
    // defers): it looks at the first :window queued deliveries only (claimWindow), and when those
    // hold too few that are due, sorts the due ones (claimableDue, on deliveries_claim), as before.
    claimWindow: db.prepare(
      `SELECT d.message_id AS id, (${CLAIMABLE}) AS due FROM deliveries d INDEXED BY deliveries_order
       WHERE d.route = :route AND d.state = 'queued'
       ORDER BY d.received_at, d.message_id LIMIT :window`,
    ),
    claimableDue: db.prepare(
      `SELECT d.message_id AS id, d.route FROM deliveries d INDEXED BY deliveries_claim
       WHERE d.route = :route AND ${CLAIMABLE}
       GROUP BY d.received_at, d.message_id ORDER BY d.received_at, d.message_id LIMIT :limit`,
    ),
    lease: db.prepare(
      `UPDATE deliveries AS d SET lease_owner = :owner, lease_until = :leaseUntil, next_attempt_at = MIN(d.next_attempt_at, :now)
       WHERE d.message_id = :messageId AND +d.route = :route AND ${claimableAs('+d.')}
       RETURNING ${DELIVERY_COLUMNS}`,
    ),
    renew: db.prepare(
      `UPDATE deliveries SET lease_until = :until
       WHERE message_id = :messageId AND lease_owner = :owner AND state IN ('queued', 'held')`,
    ),
    message: db.prepare(`SELECT ${MESSAGE_COLUMNS} FROM messages WHERE id = ?`),
    deliveries: db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ?`),
    queuedDeliveries: db.prepare(`SELECT ${DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ? AND state = 'queued'`),
    attempts: db.prepare(
      'SELECT recipient, at, next_hop AS nextHop, result, reply FROM attempts WHERE message_id = ? ORDER BY seq',
    ),
    body: db.prepare('SELECT body FROM bodies WHERE message_id = ?'),
    // Free pages left by delivered mail, for DISK_HEADROOM (asked at every MAIL and message).
    freelistCount: db.prepare('PRAGMA freelist_count'),
    pageSize: db.prepare('PRAGMA page_size'),
    // A held delivery may still be leased by the deliverer that had it in flight: its outcome counts.
    settleFinal: db.prepare(
      `UPDATE deliveries SET state = :state, attempts = attempts + 1, last_attempt_at = :now, last_reply = :reply,
         last_next_hop = :nextHop, settled_at = :now, lease_owner = NULL, lease_until = NULL
       WHERE message_id = :messageId AND recipient = :recipient AND state IN ('queued', 'held') AND lease_owner = :owner`,
    ),
    settleDeferred: db.prepare(
      `UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = :now, last_reply = :reply,
         last_next_hop = :nextHop, next_attempt_at = :nextAttemptAt, lease_owner = NULL, lease_until = NULL
       WHERE message_id = :messageId AND recipient = :recipient AND state IN ('queued', 'held') AND lease_owner = :owner`,
    ),
    insertAttempt: db.prepare(
      'INSERT INTO attempts (message_id, recipient, at, next_hop, result, reply) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    pending: db.prepare(
      `SELECT COUNT(*) AS n FROM deliveries WHERE message_id = ? AND state IN ('queued', 'held')`,
    ),
    list: db.prepare(
      `SELECT ${MESSAGE_COLUMNS} FROM messages m WHERE ${LISTED} ORDER BY m.received_at DESC, m.id DESC LIMIT :limit OFFSET :offset`,
    ),
    listOldest: db.prepare(
      `SELECT ${MESSAGE_COLUMNS} FROM messages m WHERE ${LISTED} ORDER BY m.received_at, m.id LIMIT :limit OFFSET :offset`,
    ),
    receivedSince: db.prepare('SELECT COUNT(*) AS n FROM messages WHERE received_at >= ?'),
    settledSince: db.prepare('SELECT state, COUNT(*) AS n FROM deliveries WHERE settled_at >= ? GROUP BY state'),
    listed: db.prepare(`SELECT COUNT(*) AS n FROM messages m WHERE ${LISTED}`),
    hold: db.prepare(`UPDATE deliveries SET state = 'held' WHERE message_id = ? AND state = 'queued'`),
    release: db.prepare(`UPDATE deliveries SET state = 'queued', next_attempt_at = ? WHERE message_id = ? AND state = 'held'`),
    retryNow: db.prepare(
      `UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, lease_until = NULL WHERE message_id = ? AND state = 'queued'`,
    ),
    delayWarnable: db.prepare(
      `SELECT m.id FROM messages m
       WHERE m.received_at < ? AND m.delay_warned_at IS NULL
         AND EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state = 'queued')
       ORDER BY m.received_at, m.id LIMIT ?`,
    ),
    markDelayWarned: db.prepare('UPDATE messages SET delay_warned_at = ? WHERE id = ?'),
    purgeable: db.prepare(
      `SELECT m.id FROM messages m
       WHERE m.id IN (SELECT message_id FROM deliveries WHERE settled_at < :before)
         AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND (d.settled_at IS NULL OR d.settled_at >= :before))`,
    ),
    deleteMessage: db.prepare('DELETE FROM messages WHERE id = ?'),
    deleteBody: db.prepare('DELETE FROM bodies WHERE message_id = ?'),
    deleteDeliveries: db.prepare('DELETE FROM deliveries WHERE message_id = ?'),
    deleteAttempts: db.prepare('DELETE FROM attempts WHERE message_id = ?'),
    routes: db.prepare(`SELECT DISTINCT route FROM deliveries WHERE state = 'queued' ORDER BY route`),
    nextDue: db.prepare(`SELECT MIN(next_attempt_at) AS t FROM deliveries WHERE route = ? AND state = 'queued'`),
    queuedByRoute: db.prepare(`SELECT route, COUNT(*) AS n FROM deliveries WHERE state = 'queued' GROUP BY route`),
    stateCounts: db.prepare(`SELECT state, COUNT(*) AS n FROM deliveries WHERE state <> 'queued' GROUP BY state`),
    pendingMessages: db.prepare(
      `SELECT COUNT(DISTINCT message_id) AS n FROM deliveries WHERE state IN ('queued', 'held')`,
    ),
    oldestQueued: db.prepare(
      `SELECT MIN(m.received_at) AS t FROM messages m
       WHERE EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.state = 'queued')`,
    ),
    cacheGet: db.prepare('SELECT value FROM cache WHERE key = ? AND expires_at > ?'),
    cachePut: db.prepare(
      'INSERT INTO cache (key, value, expires_at) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at',
    ),
    cacheExpire: db.prepare('DELETE FROM cache WHERE expires_at <= ?'),
  };

  function readMessage(id: string): MessageInfo | null {
    const row = q.message.get(id) as MessageRow | undefined;
    return row ? toMessage(row) : null;
  }

  function readDeliveries(message: MessageInfo, queuedOnly = false): Delivery[] {
    const rows = (queuedOnly ? q.queuedDeliveries : q.deliveries).all(message.id) as unknown as DeliveryRow[];
    return inRecipientOrder(message, rows.map(toDelivery));
  }

  function deleteBody(id: string): void {
    q.deleteBody.run(id);
    q.deleteParts.run(id);
  }

  /**
   * A body larger than BODY_PART_SIZE is kept in parts (body_parts, its `bodies` row empty): SQLite
   * builds each row whole in memory, twice, so a 25 MB blob cost 50 MB more at put and again at
   * readBody; parts cost one part.
   */
  function insertBody(id: string, body: Buffer): void {
    if (body.length <= BODY_PART_SIZE) return void q.insertBody.run(id, body);
    q.insertBody.run(id, EMPTY);
    for (let seq = 0; seq * BODY_PART_SIZE < body.length; seq++) {
      q.insertPart.run(id, seq, body.subarray(seq * BODY_PART_SIZE, (seq + 1) * BODY_PART_SIZE));
    }
  }

  /** The parts of a body, read one at a time as the reader asks for them. */
  function* bodyParts(id: string, count: number): Generator<Buffer> {
    for (let seq = 0; seq < count; seq++) {
      if (!open) throw new Error('sqlite store is closed');
      const row = q.part.get(id, seq) as { part: Uint8Array } | undefined;
      if (!row) throw new Error(`message ${id} has no body any more: every delivery is delivered or failed`);
      passedThrough(row.part.byteLength); // the parts sent before this one, and the client's copies of them, are garbage now
      yield Buffer.from(row.part.buffer, row.part.byteOffset, row.part.byteLength);
    }
  }

  function deleteMessage(id: string): boolean {
    deleteBody(id);
    q.deleteDeliveries.run(id);
    q.deleteAttempts.run(id);
    return Number(q.deleteMessage.run(id).changes) > 0;
  }

  type Group = { id: string; route: string };
  type Filter = { now: number; dueBy: number; notAttemptedSince: number | null };

  /** The (message, route) groups a claim leases, oldest first, at most `limit`. */
  function claimable(o: ClaimOptions, filter: Filter): Group[] {
    const { limit, route } = o;
    // A bound, not a NULL test, so that the expiry sweep's walk ends at its age.
    const select = { ...filter, receivedBefore: o.receivedBefore ?? Number.MAX_SAFE_INTEGER, limit };
    if (route === undefined) return q.claimableOfAny.all(select) as unknown as Group[];
    if (filter.dueBy === Number.MAX_SAFE_INTEGER) return q.claimableOfRoute.all({ ...select, route }) as unknown as Group[];
    const window = CLAIM_WINDOW * limit;
    const rows = q.claimWindow.all({ ...filter, route, window }) as unknown as { id: string; due: number }[];
    const ids = new Set(rows.filter((row) => row.due).map((row) => row.id));
    // Complete when the window held enough, or every queued delivery of the route.
    if (ids.size >= limit || rows.length < window) return [...ids].slice(0, limit).map((id) => ({ id, route }));
    return q.claimableDue.all({ ...filter, route, limit }) as unknown as Group[];
  }

  function assertOpen(): void {
    if (!open) throw new Error('sqlite store is closed');
  }

  return {
    async put(mail: ReceivedMail, routes: Record<string, string>): Promise<boolean> {
      assertOpen();
      const recipients = routedRecipients(mail, routes);
      return group.write(() => {
        const inserted = q.insertMessage.run(
          mail.id,
          mail.envelope.mailFrom,
          JSON.stringify(recipients),
          JSON.stringify(mail.envelope),
          mail.body.length,
          mail.receivedAt,
          JSON.stringify(mail.trace ?? {}),
        );
        if (Number(inserted.changes) === 0) return false;
        insertBody(mail.id, mail.body);
        for (const r of recipients) q.insertDelivery.run(mail.id, r, routes[r] as string, mail.receivedAt, mail.receivedAt);
        return true;
      }, PUT_WITHIN_MS);
    },

    async claim(o: ClaimOptions): Promise<ClaimedMessage[]> {
      assertOpen();
      const filter = {
        now: o.now,
        dueBy: o.ignoreSchedule || o.receivedBefore !== undefined ? Number.MAX_SAFE_INTEGER : o.now,
        notAttemptedSince: o.notAttemptedSince ?? null,
      };
      return group.write(() => {
        const groups = claimable(o, filter);
        const claimed: ClaimedMessage[] = [];
        for (const { id, route } of groups) {
          const message = readMessage(id);
          if (!message) continue;
          const rows = q.lease.all({ ...filter, messageId: id, route, owner: o.owner, leaseUntil: o.now + o.leaseMs });
          const deliveries = (rows as unknown as DeliveryRow[]).map(toDelivery);
          if (deliveries.length > 0) claimed.push({ message, route, deliveries: inRecipientOrder(message, deliveries) });
        }
        return claimed;
      });
    },

    async renew(leases: LeaseRef[], until: number): Promise<LeaseRef[]> {
      assertOpen();
      if (leases.length === 0) return [];
      // Not synced: a lease matters only to live processes (after a power loss none is left).
      return tx(() => leases.filter((lease) => Number(q.renew.run({ messageId: lease.messageId, owner: lease.owner, until }).changes) > 0));
    },

    async settle(messageId: string, owner: string, outcomes: Outcome[], now: number): Promise<void> {
      assertOpen();
      await group.write(() => {
        for (const o of outcomes) {
          const params = { messageId, recipient: o.recipient, owner, now, reply: o.reply, nextHop: o.nextHop ?? null };
          const changed =
            o.result === 'deferred'
              ? q.settleDeferred.run({ ...params, nextAttemptAt: o.nextAttemptAt })
              : q.settleFinal.run({ ...params, state: o.result });
          if (Number(changed.changes) > 0) {
            q.insertAttempt.run(messageId, o.recipient, now, o.nextHop ?? null, o.result, o.reply);
          }
        }
        if ((q.pending.get(messageId) as { n: number }).n === 0) deleteBody(messageId);
      }, SETTLE_WITHIN_MS);
    },

    async readBody(messageId: string): Promise<Readable> {
      assertOpen();
      // A body in one row is one SELECT, consistent by itself; a body in parts, or none, is read in a transaction.
      const whole = q.body.get(messageId) as { body: Uint8Array } | undefined;
      const row = whole && whole.body.byteLength > 0 ? { ...whole, parts: 0 } : tx(() => {
        const found = q.body.get(messageId) as { body: Uint8Array } | undefined;
        if (found) return { ...found, parts: found.body.byteLength === 0 ? Number((q.partCount.get(messageId) as { n: number }).n) : 0 };
        if (readMessage(messageId)) {
          throw new Error(`message ${messageId} has no body any more: every delivery is delivered or failed`);
        }
        throw new Error(`message ${messageId} is not in the store`);
      }, 'DEFERRED');
      if (row.parts > 0) return Readable.from(bodyParts(messageId, row.parts), { objectMode: false });
      const body = Buffer.from(row.body.buffer, row.body.byteOffset, row.body.byteLength);
      return Readable.from([body], { objectMode: false });
    },

    async getMessage(messageId: string): Promise<MessageDetail | null> {
      assertOpen();
      return tx(() => {
        const message = readMessage(messageId);
        if (!message) return null;
        const attempts = q.attempts.all(messageId) as unknown as AttemptRecord[];
        return { message, deliveries: readDeliveries(message), attempts: attempts.map((a) => ({ ...a })) };
      }, 'DEFERRED');
    },

    async list(filter: ListFilter): Promise<{ total: number; items: MessageSummary[] }> {
      assertOpen();
      const where = {
        states: filter.state === undefined ? null : JSON.stringify([filter.state].flat()),
        domain: filter.domain ?? null,
        sender: filter.sender ?? null,
        recipient: filter.recipient ?? null,
        receivedBefore: filter.receivedBefore ?? null,
      };
      const page = { limit: Math.max(0, Math.min(filter.limit ?? 50, 1000)), offset: Math.max(0, filter.offset ?? 0) };
      return tx(() => {
        const total = (q.listed.get(where) as { n: number }).n;
        const rows = (filter.order === 'oldest' ? q.listOldest : q.list).all({ ...where, ...page }) as unknown as MessageRow[];
        const items = rows.map((row) => {
          const message = toMessage(row);
          return { message, deliveries: readDeliveries(message) };
        });
        return { total, items };
      }, 'DEFERRED');
    },

    async hold(messageId: string): Promise<number> {
      assertOpen();
      return durable(() => Number(q.hold.run(messageId).changes));
    },

    async release(messageId: string, now: number): Promise<number> {
      assertOpen();
      return durable(() => Number(q.release.run(now, messageId).changes));
    },

    async retryNow(messageId: string, now: number): Promise<number> {
      assertOpen();
      return durable(() => Number(q.retryNow.run(now, messageId).changes));
    },

    async remove(messageId: string): Promise<boolean> {
      assertOpen();
      return durable(() => deleteMessage(messageId));
    },

    async bulk(action: BulkAction, messageIds: string[], now: number): Promise<BulkResult> {
      assertOpen();
      const one = {
        hold: (id: string) => Number(q.hold.run(id).changes),
        release: (id: string) => Number(q.release.run(now, id).changes),
        retry: (id: string) => Number(q.retryNow.run(now, id).changes),
        remove: (id: string) => {
          const deliveries = Number(q.deleteDeliveries.run(id).changes);
          return deleteMessage(id) ? Math.max(1, deliveries) : 0;
        },
      }[action];
      const result: BulkResult = { messages: [], deliveries: 0 };
      // A few hundred per transaction: deliverers get the lock in between; one sync at the end.
      for (let start = 0; start < messageIds.length; start += BULK_CHUNK) {
        tx(() => {
          for (const id of messageIds.slice(start, start + BULK_CHUNK)) {
            const changed = one(id);
            if (changed > 0) {
              result.messages.push(id);
              result.deliveries += changed;
            }
          }
        });
      }
      await group.synced();
      return result;
    },

    async activity(since: number): Promise<Activity> {
      assertOpen();
      return tx(() => {
        const counts: Record<string, number> = {};
        for (const r of q.settledSince.all(since) as unknown as { state: string; n: number }[]) counts[r.state] = r.n;
        return { received: (q.receivedSince.get(since) as { n: number }).n, delivered: counts['delivered'] ?? 0, failed: counts['failed'] ?? 0 };
      }, 'DEFERRED');
    },

    async takeDelayWarnings(receivedBefore: number, now: number, limit: number): Promise<MessageSummary[]> {
      assertOpen();
      return durable(() => {
        const ids = q.delayWarnable.all(receivedBefore, limit) as unknown as { id: string }[];
        return ids.map(({ id }) => {
          q.markDelayWarned.run(now, id);
          const message = readMessage(id) as MessageInfo;
          return { message, deliveries: readDeliveries(message, true) };
        });
      });
    },

    async purge(settledBefore: number): Promise<number> {
      assertOpen();
      return durable(() => {
        const ids = q.purgeable.all({ before: settledBefore }) as unknown as { id: string }[];
        // Expired cache entries are invisible to cacheGet; drop them with the old records.
        q.cacheExpire.run(settledBefore);
        return ids.filter(({ id }) => deleteMessage(id)).length;
      });
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
      return tx(() => {
        const queued: Record<string, number> = {};
        for (const r of q.queuedByRoute.all() as unknown as { route: string; n: number }[]) queued[r.route] = r.n;
        const counts: Record<string, number> = {};
        for (const r of q.stateCounts.all() as unknown as { state: string; n: number }[]) counts[r.state] = r.n;
        return {
          queued,
          held: counts['held'] ?? 0,
          delivered: counts['delivered'] ?? 0,
          failed: counts['failed'] ?? 0,
          messages: (q.pendingMessages.get() as { n: number }).n,
          oldestQueuedAt: (q.oldestQueued.get() as { t: number | null }).t,
        };
      }, 'DEFERRED');
    },

    async cacheGet(key: string, now: number): Promise<string | null> {
      assertOpen();
      return (q.cacheGet.get(key, now) as { value: string } | undefined)?.value ?? null;
    },

    async cachePut(key: string, value: string, expiresAt: number): Promise<void> {
      assertOpen();
      // Not synced: a cache entry lost to a power loss is fetched again; the console's log-in must work on a failed disk.
      tx(() => q.cachePut.run(key, value, expiresAt));
    },

    ready(): boolean {
      return open && db.isOpen && group.failed === null;
    },

    spareBytes(): number {
      if (!open || !db.isOpen) return 0;
      const pages = q.freelistCount.get() as { freelist_count: number };
      const size = q.pageSize.get() as { page_size: number };
      return Number(pages.freelist_count) * Number(size.page_size);
    },

    async close(): Promise<void> {
      if (!open) return;
      open = false;
      await group.close();
      wal?.close();
      db.close();
    },
  };
}
