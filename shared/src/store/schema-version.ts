/**
 * Versions of what a store adapter writes, and the forward migrations between them (issue 13). Each
 * adapter numbers its own format (SQLite: PRAGMA user_version; MongoDB: the `meta` document
 * `schema`) and keeps a list of steps, one per version, from its oldest readable format to the
 * current one. At start-up the store is brought forward step by step; a store written by a newer
 * build is refused, untouched.
 *
 * The rule for every change to a stored format: bump the adapter's version, add a step `from` the
 * previous version, and add a test that writes a store in the previous format (by hand, from a copy
 * of that format kept in the test) and delivers its mail through the current code.
 */

/** One step: brings a store from version `from` to `from + 1`. */
export interface Migration<Db> {
  from: number;
  /** What the step changes, for the start-up log. */
  what: string;
  up(db: Db): void | Promise<void>;
}

/** The store cannot be used by this build: its schema is newer, no step leads from it, or a step failed. Its message is one line. */
export class StoreSchemaError extends Error {}

/** Why the SQLite file at `path` could not be opened, as the one line naming DATA_DIR that start-up prints (exit 78). */
export function sqliteOpenFailure(path: string, error: unknown): string {
  // A newer or foreign file, or one SQLite cannot open.
  return error instanceof StoreSchemaError ? `DATA_DIR: ${error.message}` : `DATA_DIR: cannot open ${path}: ${(error as Error).message}`;
}

/**
 * The steps, in order, that bring a store at `stored` to `current`; none when it is current.
 * `where` names the store in the error (a file, a database).
 */
export function migrationPath<M extends { from: number }>(stored: number, current: number, migrations: readonly M[], where: string): M[] {
  if (!Number.isInteger(stored) || stored < 0) throw new StoreSchemaError(`${where}: store schema version ${stored} is not a version backupmx writes`);
  if (stored > current) {
    throw new StoreSchemaError(
      `${where}: store schema ${stored} is newer than this build's ${current} (written by a newer backupmx); run that version or a later one, the store was left unchanged`,
    );
  }
  const steps: M[] = [];
  for (let version = stored; version < current; version++) {
    const step = migrations.find((m) => m.from === version);
    if (!step) {
      const oldest = Math.min(current, ...migrations.map((m) => m.from));
      throw new StoreSchemaError(`${where}: store schema ${stored} is older than this build can migrate (oldest: ${oldest}); the store was left unchanged`);
    }
    steps.push(step);
  }
  return steps;
}
