/**
 * The sync that makes a SQLite connection's commits durable when it runs WAL with
 * synchronous=NORMAL (see group-commit.ts for who waits on it): fdatasync of the `-wal` file, on
 * libuv's threadpool, so the event loop goes on serving sessions meanwhile.
 *
 * Why that is enough. In WAL mode synchronous=FULL is NORMAL plus one sync of the WAL after each
 * commit, and this is that sync, moved after the COMMIT returns and shared by every commit before it.
 * NORMAL still syncs the WAL before each checkpoint copies it into the database, the database after
 * the checkpoint, and the WAL header when the WAL is reused. So:
 * - WAL reset after a checkpoint: the next writer starts again at the top of the same file. Frames
 *   written before the reset were checkpointed into the database and synced there before SQLite let
 *   them be overwritten, so a commit whose frames are overwritten before our sync ran is durable in
 *   the database file; the frames now in the WAL are covered by our sync.
 * - The file being replaced: SQLite deletes the WAL only when the last connection to the database
 *   closes, and ours is open, so while the store is open it is one file (one inode) and one
 *   descriptor, opened at open(), stays right. Each sync still compares the path's inode with the
 *   descriptor's: should anyone delete or replace the file under us, what SQLite writes into the
 *   orphan is lost at close, and the sync fails (the callers get a 4xx) instead of acknowledging it.
 *   One long-lived descriptor also sees every writeback error since it was opened (Linux reports an
 *   error once to each open descriptor of the file), even one that SQLite's own descriptor met first.
 * - A WAL created just now: FULL would also sync its directory at the first commit (NORMAL: not
 *   before the first checkpoint), so open() syncs the directory once, for the -wal and database
 *   entries alike.
 * - Several processes on one file (the services over RabbitMQ: spool and deliverer): each syncs after
 *   its own commits. fdatasync covers the whole inode, whoever wrote it, so a sync never misses a
 *   frame written before it started.
 * - Locks: SQLite's POSIX locks are per process and released by closing any descriptor of the locked
 *   file: we open only the -wal, which carries none (SQLite locks the database file and the -shm).
 */
import { closeSync, fdatasync, fstatSync, fsyncSync, openSync, statSync } from 'node:fs';
import { dirname } from 'node:path';

export interface WalSync {
  /** Makes durable everything written to the WAL before the call. */
  sync(): Promise<void>;
  close(): void;
}

/** For the database at `databasePath`, whose -wal file exists (the connection has run a transaction in WAL mode). */
export function openWalSync(databasePath: string): WalSync {
  const walPath = `${databasePath}-wal`;
  const fd = openSync(walPath, 'r');
  const { dev, ino } = fstatSync(fd);
  const dir = openSync(dirname(walPath), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }

  return {
    sync() {
      // A stat of a hot inode takes microseconds: on this thread, rather than a second trip to the threadpool.
      const now = statSync(walPath, { throwIfNoEntry: false });
      if (now?.dev !== dev || now.ino !== ino) {
        return Promise.reject(new Error(`${walPath} was removed or replaced while the store had it open: its writes cannot be made durable`));
      }
      return new Promise<void>((resolve, reject) => fdatasync(fd, (error) => (error ? reject(error) : resolve())));
    },
    close: () => closeSync(fd),
  };
}
