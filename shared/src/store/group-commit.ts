/**
 * Group commit for a synchronous SQLite connection (node:sqlite). Every write is its own durable
 * COMMIT otherwise: with WAL and synchronous=FULL that is one fsync per put, claim and settle, on
 * the event loop's thread, and under load the SMTP sessions queue behind them. Here the writes that
 * arrive within one turn of the event loop (all that piled up while the last commit was syncing)
 * share one BEGIN IMMEDIATE ... COMMIT, so one fsync covers them all. A write that nobody waits
 * on in a hurry (a settle: the primary already has the mail) may ask to wait a few milliseconds for
 * company; any write that cannot wait takes it along in the next turn.
 *
 * Durability does not move: a caller's promise settles only after the COMMIT that holds its write
 * has returned (synchronous=FULL: synced), so nothing is acknowledged before it is on disk. Each
 * write runs in a SAVEPOINT of its own: one that throws is rolled back alone and rejects alone; a
 * failed BEGIN or COMMIT (busy, disk full) rolls back the whole group and rejects every caller in it.
 */
import type { DatabaseSync } from 'node:sqlite';

interface Job {
  fn: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

export interface GroupCommit {
  /**
   * Run `fn` inside the next group's transaction; resolves with its result once that group is
   * committed. `withinMs`: the group may wait up to that long for other writes (default 0: the next turn).
   */
  write<T>(fn: () => T, withinMs?: number): Promise<T>;
  /** Commit what is waiting now (before close). */
  flush(): void;
  /** Groups committed and writes in them so far (for the bench and tests). */
  readonly stats: { groups: number; writes: number; largest: number };
}

export function groupCommit(db: DatabaseSync, options: { maxWrites?: number } = {}): GroupCommit {
  const maxWrites = options.maxWrites ?? 1000;
  let waiting: Job[] = [];
  let immediate: NodeJS.Immediate | null = null;
  let timer: NodeJS.Timeout | null = null;
  const stats = { groups: 0, writes: 0, largest: 0 };

  function schedule(withinMs: number): void {
    if (immediate) return;
    if (withinMs > 0) {
      timer ??= setTimeout(commit, withinMs);
      return;
    }
    // After the I/O callbacks of this turn: everything that arrived meanwhile joins the group.
    immediate = setImmediate(commit);
  }

  function commit(): void {
    if (immediate) clearImmediate(immediate);
    if (timer) clearTimeout(timer);
    immediate = timer = null;
    while (waiting.length > 0) {
      const group = waiting.slice(0, maxWrites);
      waiting = waiting.slice(group.length);
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
        if (result?.ok) job.resolve(result.value);
        else job.reject(result?.error);
      });
    }
  }

  return {
    write<T>(fn: () => T, withinMs = 0): Promise<T> {
      return new Promise<T>((resolve, reject) => {
        waiting.push({ fn, resolve: resolve as (value: unknown) => void, reject });
        schedule(withinMs);
      });
    },
    flush: commit,
    stats,
  };
}
