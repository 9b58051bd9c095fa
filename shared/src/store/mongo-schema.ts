/**
 * The MongoDB store's format version (the document `schema` in the collection `meta`) and its
 * forward migrations (see schema-version.ts for the rule). MongoDB gives no transaction over a whole
 * database here (the adapter uses none), so a step instead must be idempotent and only add: the
 * version moves on only after a step has finished, a step interrupted by a crash runs again at the
 * next start, and several instances starting together may run the same step side by side.
 *
 * Formats:
 *   1  0.1.0 before versioning (no `meta` document): message documents do not name their routes.
 *   2  message documents carry `routes` (by recipient position): a repeated put completes a put
 *      that stopped half-way from the stored message alone.
 */
import type { Db } from 'mongodb';
import type { Logger } from '../runtime/logger.ts';
import { routesOf, WITHOUT_ROUTES, type StoredMessage } from './mongo-queries.ts';
import { type Migration, migrationPath } from './schema-version.ts';

export const MONGO_SCHEMA_VERSION = 2;

interface MetaDoc {
  _id: string;
  version: number;
  updatedAt: Date;
}

const MIGRATIONS: Migration<Db>[] = [
  {
    from: 1,
    what: 'message documents name the route of each recipient',
    async up(db) {
      const messages = db.collection<StoredMessage>('messages');
      const deliveries = db.collection<{ messageId: string; recipient: string; route: string }>('deliveries');
      for await (const message of messages.find(WITHOUT_ROUTES, { projection: { _id: 1, recipients: 1 } })) {
        const found = await deliveries.find({ messageId: message._id }, { projection: { recipient: 1, route: 1 } }).toArray();
        await messages.updateOne({ _id: message._id, ...WITHOUT_ROUTES }, { $set: { routes: routesOf(message.recipients, found) } });
      }
    },
  },
];

/** The database's format: its `schema` document, 1 when it holds mail but no such document, null when empty. */
async function storedVersion(db: Db): Promise<number | null> {
  const meta = await db.collection<MetaDoc>('meta').findOne({ _id: 'schema' });
  if (meta) return meta.version;
  const used = await db.collection('messages').findOne({}, { projection: { _id: 1 } });
  return used ? 1 : null;
}

/** Record `version` (never moving back: a slower instance that ran an older step does not undo a newer one). */
async function recordVersion(db: Db, version: number): Promise<void> {
  const meta = db.collection<MetaDoc>('meta');
  const update = { $max: { version }, $set: { updatedAt: new Date() } };
  try {
    await meta.updateOne({ _id: 'schema' }, update, { upsert: true });
  } catch (error) {
    // Two instances upserting the first version at once: one insert wins, the other updates.
    if ((error as { code?: unknown }).code !== 11000) throw error;
    await meta.updateOne({ _id: 'schema' }, update);
  }
}

/**
 * Bring the database forward to MONGO_SCHEMA_VERSION (or record it in an empty one). Throws
 * StoreSchemaError (one line) when the database was written by a newer build.
 */
export async function prepareMongoSchema(db: Db, where: string, log: Logger): Promise<void> {
  const from = await storedVersion(db);
  if (from === MONGO_SCHEMA_VERSION) return;
  const steps = from === null ? [] : migrationPath(from, MONGO_SCHEMA_VERSION, MIGRATIONS, where);
  for (const step of steps) {
    log.info({ db: db.databaseName, from: step.from, to: step.from + 1, what: step.what }, 'migrating the store');
    await step.up(db);
    await recordVersion(db, step.from + 1);
  }
  if (from === null) await recordVersion(db, MONGO_SCHEMA_VERSION);
  else log.info({ db: db.databaseName, from, to: MONGO_SCHEMA_VERSION }, 'store migrated to the current schema');
}
