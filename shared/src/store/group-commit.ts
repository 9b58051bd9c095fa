/**
 * Group commit for a synchronous SQLite connection (node:sqlite), with the sync off the event loop.
 * node:sqlite runs every statement on the event loop's thread; with WAL and synchronous=FULL each
 * COMMIT also fsyncs the WAL there, and under load the SMTP sessions queue behind those fsyncs. So
 * the connection runs with synchronous=NORMAL (COMMIT writes the WAL, does not sync it) and
 * durability is explicit: after each group's COMMIT, `sync` (sqlite-store: fdatasync of the -wal
 * file, wal-sync.ts) runs on libuv's threadpool, and a write's promise resolves only once a sync
 * that STARTED after its COMMIT returned has completed. One sync is in flight at a time; the groups
 * committed meanwhile wait for the next one, which covers them all (a sync makes durable every
 * commit before it): group commit at the sync. Without `sync` (an in-memory database) a write
 * resolves when its COMMIT returns.
 *
 * Grouping: the writes that arrive within one turn of the event loop share one BEGIN IMMEDIATE ...
 * COMMIT. A write that nobody waits on in a hurry may ask to wait a few milliseconds for company
 * (`withinMs`); any write that cannot wait takes it along in the next turn. Each write runs in a
 * SAVEPOINT of its own: one that throws is rolled back alone and rejects at once; a failed BEGIN or
 * COMMIT (busy, disk full) rolls back the whole group and rejects every caller in it.
 *
 * A failed sync (EIO, ENOSPC) rejects every caller whose commits it covered: their writes may be
 * lost, so the sender gets a 4xx and keeps the message, never a 250. It also refuses every write
 * after it, for good (`failed`; the store reports not ready): the kernel may have dropped the pages
 * it could not write and will not retry them, so a later sync that succeeds proves nothing about
 * them, and SQLite's recovery stops at the first WAL frame that is not on disk, which would take
 * later acknowledged commits with it. Restarting the process reopens the database from what the
 * disk holds.
 *
 * A commit is visible to readers (this connection's next group, other processes) as soon as its
 * COMMIT returns, before it is durable. A claim that leases a message whose put is not synced yet
 * resolves only after a sync of its own, which covers the put too (same file, started later), so
 * nothing is handed to a deliverer before its put is on disk while the syncs succeed. When the
 * put's sync fails, the sender got a 4xx and the message may still be delivered from the store: it
 * comes twice, never not at all. The same holds for a power loss between a commit and its sync:
 * the write is gone with the caller unanswered (the sender, or RabbitMQ, sends it again).
 */
import type { DatabaseSync } from 'node:sqlite';

interface Job {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

/** A caller whose write is committed and waits for a sync. */
interface Unsynced {
  resolve: () => void;
  reject: (error: unknown) => void;
}

export interface GroupCommitOptions {
  /** Writes per transaction at most. */
  maxWrites?: number;
  /** Makes durable every COMMIT that returned before it was called. Unset: a COMMIT is durable by itself. */
  sync?: (() => Promise<void>) | undefined;
}

export interface GroupCommit {
  /**
   * Run `fn` inside the next group's transaction; resolves with its result once that group is
   * committed and synced. `withinMs`: the group may wait up to that long for other writes (default 0: the next turn).
   */
  write<T>(fn: () => T, withinMs?: number): Promise<T>;
  /** Resolves once every commit made on the connection so far is durable (for writes that run their own transaction). */
  synced(): Promise<void>;
  /** The error of a failed sync, after which every write is refused; null while none failed. */
  readonly failed: unknown;
  /** Commit what is waiting now and wait for its sync (before close). */
  close(): Promise<void>;
  /** Groups committed, writes in them and syncs so far (for the bench and tests). */
  readonly stats: { groups: number; writes: number; largest: number; syncs: number };
}

export function groupCommit(db: DatabaseSync, options: GroupCommitOptions = {}): GroupCommit {
  const maxWrites = options.maxWrites ?? 1000;
  const sync = options.sync;
  let waiting: Job[] = [];
  let unsynced: Unsynced[] = [];
  let syncing: Promise<void> | null = null;
  let failed: unknown = null;
  let immediate: NodeJS.Immediate | null = null;
  let timer: NodeJS.Timeout | null = null;
  const stats = { groups: 0, writes: 0, largest: 0, syncs: 0 };

  function refusal(): Error {
    return new Error('sqlite store: a sync of its WAL failed earlier, so no write is acknowledged until the process restarts', { cause: failed });
  }

  function schedule(withinMs: number): void {
    if (immediate) return;
    if (withinMs > 0) {
      timer ??= setTimeout(commit, withinMs);
      return;
    }
    // After the I/O callbacks of this turn: everything that arrived meanwhile joins the group.
    immediate = setImmediate(commit);
  }

  /** Once committed: resolve at once (no `sync`), or wait for a sync that starts from now on. */
  function afterCommit(done: Unsynced): void {
    if (!sync) return done.resolve();
    unsynced.push(done);
  }

  function startSync(): void {
    if (!sync || syncing || unsynced.length === 0) return;
    const covered = unsynced;
    unsynced = [];
    // A sync that throws instead of rejecting rejects its callers alike.
    syncing = Promise.resolve()
      .then(sync)
      .then(
        () => {
          stats.syncs += 1;
          for (const caller of covered) caller.resolve();
        },
        (error: unknown) => {
          failed ??= error;
          for (const caller of covered) caller.reject(error);
        },
      )
      .then(() => {
        syncing = null;
        if (failed) {
          const refused = unsynced;
          unsynced = [];
          for (const caller of refused) caller.reject(refusal());
        }
        startSync();
      });
  }

  function commit(): void {
    if (immediate) clearImmediate(immediate);
    if (timer) clearTimeout(timer);
    immediate = timer = null;
    while (waiting.length > 0) {
      const group = waiting.slice(0, maxWrites);
      waiting = waiting.slice(group.length);
      if (failed) {
        for (const job of group) job.reject(refusal());
        continue;
      }
      const results: ({ ok: true; value: unknown } | { ok: false; error: unknown })[] = [];
      try {
        db.exec('BEGIN IMMEDIATE');
        for (const job of group) {
          db.exec('SAVEPOINT w');
          try {
            results.push({ ok: true, value: job.fn() });
            db.exec('RELEASE w');
          } catch (error) {
            db.exec('ROLLBACK TO w');
            db.exec('RELEASE w');
            results.push({ ok: false, error });
          }
        }
        db.exec('COMMIT');
      } catch (error) {
        if (db.isTransaction) db.exec('ROLLBACK');
        for (const job of group) job.reject(error);
        continue;
      }
      stats.groups += 1;
      stats.writes += group.length;
      stats.largest = Math.max(stats.largest, group.length);
      group.forEach((job, i) => {
        const result = results[i];
        if (result?.ok) afterCommit({ resolve: () => job.resolve(result.value), reject: job.reject });
        else job.reject(result?.error);
      });
    }
    startSync();
  }

  return {
    write<T>(fn: () => T, withinMs = 0): Promise<T> {
      if (failed) return Promise.reject(refusal());
      return new Promise<T>((resolve, reject) => {
        waiting.push({ fn, resolve: resolve as (value: unknown) => void, reject });
        schedule(withinMs);
      });
    },
    synced(): Promise<void> {
      if (failed) return Promise.reject(refusal());
      return new Promise<void>((resolve, reject) => {
        afterCommit({ resolve, reject });
        startSync();
      });
    },
    get failed() {
      return failed;
    },
    async close(): Promise<void> {
      commit();
      while (syncing) await syncing;
    },
    stats,
  };
}
