/**
 * The MongoDB store adapter (MONGODB_URL): message metadata, deliveries, attempts and a small cache
 * in collections, bodies in GridFS (bucket `bodies`: no 16 MB document limit). Every write is
 * acknowledged by a majority, journaled. No multi-document transactions: each operation is ordered
 * so that a crash between two writes leaves nothing claimable without its message and body.
 *
 * - put: body (GridFS, a fresh file id) -> message document (unique _id = queue id, with every
 *   recipient's route) -> deliveries (unique messageId+recipient). A put that finds the message
 *   document inserts whatever deliveries of the STORED recipients, routes and time are missing, so a
 *   redelivery completes a put that stopped half-way and nothing else (mongo-queries deliveryDocs);
 *   the loser of two concurrent puts deletes its own body file. The body is removed only once every
 *   recipient's delivery exists and none is queued or held.
 * - schema: versioned in `meta` and migrated forward at open (mongo-schema.ts).
 * - claim: findOneAndUpdate leases the oldest claimable delivery; updateMany leases the rest of its
 *   message and route under the same claim token. Each update re-checks claimability per document,
 *   so concurrent deliverers never lease one delivery twice.
 * - records: when a message has nothing queued or held, it and its deliveries and attempts get
 *   `expireAt` (now + retention) for the TTL indexes, and its body file is deleted (a TTL index cannot
 *   remove GridFS chunks). purge() removes old records too, with any body file left behind.
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { GridFSBucket, MongoBulkWriteError, MongoClient, ObjectId, type Db, type Filter } from 'mongodb';
import type { Logger } from '../runtime/logger.ts';
import { bulkChange, CLAIM_ORDER, claimFilter, deliveryDocs, deliveryMatch, hasWritableServer, leasedTo, leaseUpdate, listFilter, listOrder, notTaken, type DeliveryDoc } from './mongo-queries.ts';
import { prepareMongoSchema } from './mongo-schema.ts';
import { StoreSchemaError } from './schema-version.ts';
import { type Activity, type BulkAction, type BulkResult, type ClaimOptions, type LeaseRef, type ListFilter, type MessageDetail, type MessageSummary, type QueueStats, type Store, routedRecipients } from './store.ts';
import type { AttemptRecord, ClaimedMessage, Delivery, DeliveryState, MessageInfo, Outcome, ReceivedMail } from '../types.ts';
import { ConfigError } from '../runtime/config.ts';

const DEFAULT_RETENTION_MS = 7 * 86_400_000;
const DUPLICATE_KEY = 11000;

interface MessageDoc {
  _id: string;
  mailFrom: string;
  /** Distinct recipients, in the sender's order. */
  recipients: string[];
  /** Each recipient's route, by position (schema 2; absent in documents of schema 1). */
  routes?: (string | null)[];
  /** The Envelope as JSON (its DSN map is keyed by addresses, which hold dots). */
  envelope: string;
  size: number;
  receivedAt: number;
  trace: Record<string, string>;
  delayWarnedAt: number | null;
  bodyId: ObjectId;
  /** Set when no delivery is queued or held any more: the latest delivery settledAt. */
  settledAt: number | null;
  expireAt?: Date;
}

interface AttemptDoc extends AttemptRecord {
  messageId: string;
  expireAt?: Date;
}

interface CacheDoc {
  _id: string;
  value: string;
  expiresAt: number;
  expireAt: Date;
}

function toMessage(doc: MessageDoc): MessageInfo {
  return {
    id: doc._id,
    mailFrom: doc.mailFrom,
    recipients: doc.recipients,
    envelope: JSON.parse(doc.envelope) as MessageInfo['envelope'],
    size: doc.size,
    receivedAt: doc.receivedAt,
    trace: doc.trace,
    delayWarnedAt: doc.delayWarnedAt,
  };
}

function toDelivery(doc: DeliveryDoc): Delivery {
  const { messageId, recipient, route, state, attempts, nextAttemptAt, lastAttemptAt, lastReply, lastNextHop, settledAt } = doc;
  return { messageId, recipient, route, state, attempts, nextAttemptAt, lastAttemptAt, lastReply, lastNextHop, settledAt };
}

function isDuplicateKey(error: unknown): boolean {
  if (error instanceof MongoBulkWriteError) return ([] as { code: number }[]).concat(error.writeErrors).every((e) => e.code === DUPLICATE_KEY);
  return (error as { code?: unknown }).code === DUPLICATE_KEY;
}

const PENDING: DeliveryState[] = ['queued', 'held'];

/** Connect, create the indexes (idempotent) and return the store. `retentionMs`: how long records are kept. */
export async function openMongoStore(url: string, log: Logger, options: { retentionMs?: number } = {}): Promise<Store> {
  const retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
  const client = new MongoClient(url, { appName: 'backupmx', writeConcern: { w: 'majority', journal: true }, ignoreUndefined: true });
  let writable = false;
  let open = true;
  client.on('topologyDescriptionChanged', (event) => {
    const now = hasWritableServer(event.newDescription.servers.values());
    if (now && !writable) log.info('MongoDB store connected');
    if (!now && writable) log.warn('MongoDB store unreachable (no writable server); the driver reconnects by itself');
    writable = now;
  });
  client.on('serverHeartbeatFailed', (event) => log.debug({ server: event.connectionId, err: event.failure }, 'MongoDB heartbeat failed'));
  await client.connect().catch((error: unknown) => {
    throw new ConfigError(`MONGODB_URL: cannot reach a writable MongoDB server: ${(error as Error).message}`);
  });
  const db: Db = client.db();
  const messages = db.collection<MessageDoc>('messages');
  const deliveries = db.collection<DeliveryDoc>('deliveries');
  const attempts = db.collection<AttemptDoc>('attempts');
  const cache = db.collection<CacheDoc>('cache');
  const bucket = new GridFSBucket(db, { bucketName: 'bodies', writeConcern: { w: 'majority', journal: true } });
  try {
    await Promise.all([
      deliveries.createIndexes([
        { key: { messageId: 1, recipient: 1 }, unique: true },
        { key: { route: 1, state: 1, receivedAt: 1, messageId: 1 } }, // claims of one route, oldest first
        { key: { route: 1, state: 1, nextAttemptAt: 1 } }, // due work, nextDue
        { key: { state: 1, receivedAt: 1, messageId: 1 } }, // claims of any route, stats
        { key: { settledAt: 1 } }, // activity (the console's last hour)
        { key: { expireAt: 1 }, expireAfterSeconds: 0 },
      ]),
      messages.createIndexes([
        { key: { receivedAt: -1, _id: -1 } },
        { key: { settledAt: 1, delayWarnedAt: 1, receivedAt: 1 } },
        { key: { expireAt: 1 }, expireAfterSeconds: 0 },
      ]),
      attempts.createIndexes([{ key: { messageId: 1, at: 1, _id: 1 } }, { key: { expireAt: 1 }, expireAfterSeconds: 0 }]),
      cache.createIndexes([{ key: { expireAt: 1 }, expireAfterSeconds: 0 }]),
    ]);
    await prepareMongoSchema(db, `MONGODB_URL: database ${db.databaseName}`, log);
  } catch (error) {
    await client.close();
    if (error instanceof StoreSchemaError) throw new ConfigError(error.message);
    throw error;
  }
  log.info({ db: db.databaseName, retentionMs }, 'using the MongoDB store');

  function assertOpen(): void {
    if (!open) throw new Error('mongodb store is closed');
  }

  async function deliveriesOf(messageId: string, filter: Filter<DeliveryDoc> = {}): Promise<Delivery[]> {
    return (await deliveries.find({ messageId, ...filter }).sort({ i: 1 }).toArray()).map(toDelivery);
  }

  async function deleteBody(bodyId: ObjectId): Promise<void> {
    await bucket.delete(bodyId).catch((error: unknown) => {
      if (!/File not found/.test((error as Error).message)) throw error;
    });
  }

  /** Once every delivery exists and none is queued or held: mark the records for expiry, drop the body. */
  async function finishIfDone(messageId: string): Promise<void> {
    const message = await messages.findOne({ _id: messageId, settledAt: null }, { projection: { recipients: 1, bodyId: 1 } });
    if (!message) return;
    const states = await deliveries.find({ messageId }, { projection: { state: 1, settledAt: 1 } }).toArray();
    if (states.length < message.recipients.length || states.some((d) => PENDING.includes(d.state))) return;
    const settledAt = Math.max(...states.map((d) => d.settledAt ?? 0));
    const expireAt = new Date(Date.now() + retentionMs); // wall clock: TTL is about real time
    await messages.updateOne({ _id: messageId, settledAt: null }, { $set: { settledAt, expireAt } });
    await deliveries.updateMany({ messageId }, { $set: { expireAt } });
    await attempts.updateMany({ messageId }, { $set: { expireAt } });
    await deleteBody(message.bodyId);
  }

  async function removeMessage(id: string, bodyId: ObjectId | undefined): Promise<boolean> {
    await deliveries.deleteMany({ messageId: id });
    await attempts.deleteMany({ messageId: id });
    if (bodyId) await deleteBody(bodyId);
    return (await messages.deleteOne({ _id: id })).deletedCount > 0;
  }

  async function summaries(docs: MessageDoc[]): Promise<MessageSummary[]> {
    const all = await deliveries.find({ messageId: { $in: docs.map((d) => d._id) } }).sort({ messageId: 1, i: 1 }).toArray();
    return docs.map((doc) => ({ message: toMessage(doc), deliveries: all.filter((d) => d.messageId === doc._id).map(toDelivery) }));
  }

  return {
    async put(mail: ReceivedMail, routes: Record<string, string>): Promise<boolean> {
      assertOpen();
      const recipients = routedRecipients(mail, routes);
      let stored = await messages.findOne({ _id: mail.id }, { projection: { recipients: 1, routes: 1, receivedAt: 1 } });
      let created = false;
      if (!stored) {
        const bodyId = new ObjectId();
        await pipeline(Readable.from([mail.body]), bucket.openUploadStreamWithId(bodyId, mail.id, { metadata: { messageId: mail.id } }));
        const doc: MessageDoc = {
          _id: mail.id,
          mailFrom: mail.envelope.mailFrom,
          recipients,
          routes: recipients.map((recipient) => routes[recipient] as string),
          envelope: JSON.stringify(mail.envelope),
          size: mail.body.length,
          receivedAt: mail.receivedAt,
          trace: mail.trace ?? {},
          delayWarnedAt: null,
          bodyId,
          settledAt: null,
        };
        try {
          await messages.insertOne(doc);
          created = true;
          stored = doc;
        } catch (error) {
          if (!isDuplicateKey(error)) throw error;
          await deleteBody(bodyId); // another put of this id got there first
          stored = await messages.findOne({ _id: mail.id }, { projection: { recipients: 1, routes: 1, receivedAt: 1 } });
          if (!stored) return false; // and it is gone again (removed meanwhile)
        }
      }
      const docs = deliveryDocs(stored, routes);
      try {
        if (docs.length > 0) await deliveries.insertMany(docs, { ordered: false });
      } catch (error) {
        if (!isDuplicateKey(error)) throw error; // already there: a redelivery, or a concurrent put
      }
      if (!created) await finishIfDone(mail.id); // an earlier put that stopped half-way may be all done by now
      return created;
    },

    async claim(o: ClaimOptions): Promise<ClaimedMessage[]> {
      assertOpen();
      const token = new ObjectId().toHexString();
      const claimable = claimFilter(o) as Filter<DeliveryDoc>;
      const taken: { messageId: string; route: string }[] = [];
      const claimed: ClaimedMessage[] = [];
      while (claimed.length < o.limit) {
        const first = await deliveries.findOneAndUpdate({ ...claimable, ...notTaken(taken) }, leaseUpdate(o, token), { sort: CLAIM_ORDER });
        if (!first) break;
        const group = { messageId: first.messageId, route: first.route };
        taken.push(group);
        await deliveries.updateMany({ ...claimable, ...group }, leaseUpdate(o, token));
        const doc = await messages.findOne({ _id: group.messageId });
        if (!doc) {
          // Removed meanwhile: give the leases back.
          await deliveries.updateMany({ ...group, leaseToken: token }, { $set: { leaseOwner: null, leaseUntil: null } });
          continue;
        }
        // Only what this call still holds: a lease that ended meanwhile may have gone to another claim.
        const held = await deliveriesOf(group.messageId, { route: group.route, leaseToken: token });
        if (held.length > 0) claimed.push({ message: toMessage(doc), route: group.route, deliveries: held });
      }
      return claimed;
    },

    async renew(leases: LeaseRef[], until: number): Promise<LeaseRef[]> {
      assertOpen();
      const held: LeaseRef[] = [];
      for (const lease of leases) {
        const { matchedCount } = await deliveries.updateMany(leasedTo(lease.messageId, lease.owner), { $set: { leaseUntil: until } });
        if (matchedCount > 0) held.push(lease);
      }
      return held;
    },

    async settle(messageId: string, owner: string, outcomes: Outcome[], now: number): Promise<void> {
      assertOpen();
      const recorded: AttemptDoc[] = [];
      for (const o of outcomes) {
        const record = { lastAttemptAt: now, lastReply: o.reply, lastNextHop: o.nextHop ?? null, leaseOwner: null, leaseUntil: null };
        const $set = o.result === 'deferred' ? { ...record, nextAttemptAt: o.nextAttemptAt } : { ...record, state: o.result, settledAt: now };
        // A held delivery may still be leased by the deliverer that had it in flight: its outcome counts.
        const { matchedCount } = await deliveries.updateOne(
          { ...leasedTo(messageId, owner), recipient: o.recipient },
          { $set, $inc: { attempts: 1 } },
        );
        if (matchedCount > 0) recorded.push({ messageId, recipient: o.recipient, at: now, nextHop: o.nextHop ?? null, result: o.result, reply: o.reply });
      }
      if (recorded.length > 0) await attempts.insertMany(recorded);
      await finishIfDone(messageId);
    },

    async readBody(messageId: string): Promise<Readable> {
      assertOpen();
      const doc = await messages.findOne({ _id: messageId }, { projection: { bodyId: 1, settledAt: 1 } });
      if (!doc) throw new Error(`message ${messageId} is not in the store`);
      if (doc.settledAt !== null || !(await bucket.find({ _id: doc.bodyId }, { limit: 1 }).hasNext())) {
        throw new Error(`message ${messageId} has no body any more: every delivery is delivered or failed`);
      }
      return bucket.openDownloadStream(doc.bodyId);
    },

    async getMessage(messageId: string): Promise<MessageDetail | null> {
      assertOpen();
      const doc = await messages.findOne({ _id: messageId });
      if (!doc) return null;
      const history = await attempts.find({ messageId }).sort({ at: 1, _id: 1 }).toArray();
      return {
        message: toMessage(doc),
        deliveries: await deliveriesOf(messageId),
        attempts: history.map(({ recipient, at, nextHop, result, reply }) => ({ recipient, at, nextHop, result, reply })),
      };
    },

    async list(filter: ListFilter): Promise<{ total: number; items: MessageSummary[] }> {
      assertOpen();
      const limit = Math.max(0, Math.min(filter.limit ?? 50, 1000));
      const skip = Math.max(0, filter.offset ?? 0);
      const onDelivery = deliveryMatch(filter);
      const matching = [
        { $match: listFilter(filter) },
        ...(onDelivery === null
          ? []
          : [
              { $lookup: { from: 'deliveries', localField: '_id', foreignField: 'messageId', pipeline: [{ $match: onDelivery }, { $limit: 1 }, { $project: { _id: 1 } }], as: 'hit' } },
              { $match: { 'hit.0': { $exists: true } } },
              { $project: { hit: 0 } },
            ]),
      ];
      const [counted] = await messages.aggregate<{ n: number }>([...matching, { $count: 'n' }]).toArray();
      const page = limit === 0 ? [] : await messages.aggregate<MessageDoc>([...matching, { $sort: listOrder(filter) }, { $skip: skip }, { $limit: limit }]).toArray();
      return { total: counted?.n ?? 0, items: await summaries(page) };
    },

    async hold(messageId: string): Promise<number> {
      assertOpen();
      return (await deliveries.updateMany({ messageId, state: 'queued' }, { $set: { state: 'held' } })).matchedCount;
    },

    async release(messageId: string, now: number): Promise<number> {
      assertOpen();
      return (await deliveries.updateMany({ messageId, state: 'held' }, { $set: { state: 'queued', nextAttemptAt: now } })).matchedCount;
    },

    async retryNow(messageId: string, now: number): Promise<number> {
      assertOpen();
      const { matchedCount } = await deliveries.updateMany({ messageId, state: 'queued' }, { $set: { nextAttemptAt: now, leaseOwner: null, leaseUntil: null } });
      return matchedCount;
    },

    async remove(messageId: string): Promise<boolean> {
      assertOpen();
      const doc = await messages.findOne({ _id: messageId }, { projection: { bodyId: 1 } });
      return doc ? removeMessage(messageId, doc.bodyId) : false;
    },

    async bulk(action: BulkAction, messageIds: string[], now: number): Promise<BulkResult> {
      assertOpen();
      const result: BulkResult = { messages: [], deliveries: 0 };
      for (let start = 0; start < messageIds.length; start += 1000) {
        const ids = messageIds.slice(start, start + 1000);
        if (action === 'remove') {
          for (const doc of await messages.find({ _id: { $in: ids } }, { projection: { bodyId: 1 } }).toArray()) {
            const count = await deliveries.countDocuments({ messageId: doc._id });
            if (await removeMessage(doc._id, doc.bodyId)) {
              result.messages.push(doc._id);
              result.deliveries += Math.max(1, count);
            }
          }
          continue;
        }
        const { filter, update } = bulkChange(action, ids, now);
        const touched = new Set((await deliveries.distinct('messageId', filter as Filter<DeliveryDoc>)) as string[]);
        result.deliveries += (await deliveries.updateMany(filter as Filter<DeliveryDoc>, update)).matchedCount;
        result.messages.push(...ids.filter((id) => touched.has(id)));
      }
      return result;
    },

    async activity(since: number): Promise<Activity> {
      assertOpen();
      const received = await messages.countDocuments({ receivedAt: { $gte: since } });
      const settled = await deliveries.aggregate<{ _id: DeliveryState; n: number }>([{ $match: { settledAt: { $gte: since } } }, { $group: { _id: '$state', n: { $sum: 1 } } }]).toArray();
      const count = (state: DeliveryState) => settled.find((group) => group._id === state)?.n ?? 0;
      return { received, delivered: count('delivered'), failed: count('failed') };
    },

    async takeDelayWarnings(receivedBefore: number, now: number, limit: number): Promise<MessageSummary[]> {
      assertOpen();
      const taken: MessageSummary[] = [];
      const candidates = messages.find({ settledAt: null, delayWarnedAt: null, receivedAt: { $lt: receivedBefore } }).sort({ receivedAt: 1, _id: 1 });
      for await (const doc of candidates) {
        if (taken.length >= limit) break;
        const queued = await deliveriesOf(doc._id, { state: 'queued' });
        if (queued.length === 0) continue;
        // Only one caller marks it: the update matches while delayWarnedAt is still null.
        const { modifiedCount } = await messages.updateOne({ _id: doc._id, delayWarnedAt: null }, { $set: { delayWarnedAt: now } });
        if (modifiedCount > 0) taken.push({ message: { ...toMessage(doc), delayWarnedAt: now }, deliveries: queued });
      }
      await candidates.close();
      return taken;
    },

    async purge(settledBefore: number): Promise<number> {
      assertOpen();
      let removed = 0;
      for await (const doc of messages.find({ settledAt: { $ne: null, $lt: settledBefore } }, { projection: { bodyId: 1 } })) {
        if (await removeMessage(doc._id, doc.bodyId)) removed++;
      }
      // Body files that outlived their message (a crash between two writes, a put that lost a race).
      for await (const file of bucket.find({ uploadDate: { $lt: new Date(settledBefore) } })) {
        const owner = await messages.findOne({ _id: String(file.metadata?.['messageId']), settledAt: null, bodyId: file._id }, { projection: { _id: 1 } });
        if (!owner) await deleteBody(file._id);
      }
      await cache.deleteMany({ expiresAt: { $lte: settledBefore } });
      return removed;
    },

    async routes(): Promise<string[]> {
      assertOpen();
      return ((await deliveries.distinct('route', { state: 'queued' })) as string[]).sort();
    },

    async nextDue(route: string): Promise<number | null> {
      assertOpen();
      const next = await deliveries.findOne({ route, state: 'queued' }, { sort: { nextAttemptAt: 1 }, projection: { nextAttemptAt: 1 } });
      return next?.nextAttemptAt ?? null;
    },

    async stats(): Promise<QueueStats> {
      assertOpen();
      const groups = await deliveries.aggregate<{ _id: { state: DeliveryState; route: string }; n: number }>([{ $group: { _id: { state: '$state', route: '$route' }, n: { $sum: 1 } } }]).toArray();
      const [pending] = await deliveries.aggregate<{ n: number }>([{ $match: { state: { $in: PENDING } } }, { $group: { _id: '$messageId' } }, { $count: 'n' }]).toArray();
      const oldest = await deliveries.findOne({ state: 'queued' }, { sort: { receivedAt: 1 }, projection: { receivedAt: 1 } });
      const stats: QueueStats = { queued: {}, held: 0, delivered: 0, failed: 0, messages: pending?.n ?? 0, oldestQueuedAt: oldest?.receivedAt ?? null };
      for (const { _id, n } of groups) {
        if (_id.state === 'queued') stats.queued[_id.route] = n;
        else stats[_id.state] += n;
      }
      return stats;
    },

    async cacheGet(key: string, now: number): Promise<string | null> {
      assertOpen();
      return (await cache.findOne({ _id: key, expiresAt: { $gt: now } }))?.value ?? null;
    },

    async cachePut(key: string, value: string, expiresAt: number): Promise<void> {
      assertOpen();
      await cache.updateOne({ _id: key }, { $set: { value, expiresAt, expireAt: new Date(expiresAt) } }, { upsert: true });
    },

    ready(): boolean {
      return open && writable;
    },

    async close(): Promise<void> {
      if (!open) return;
      open = false;
      await client.close();
    },
  };
}
