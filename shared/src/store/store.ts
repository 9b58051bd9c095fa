import type { Readable } from 'node:stream';
import type { AttemptRecord, ClaimedMessage, Delivery, DeliveryState, MessageInfo, Outcome, ReceivedMail } from '../types.ts';

export interface ClaimOptions {
  /** Only this route; absent: any route (the expiry sweep). */
  route?: string;
  /** Epoch ms; deliveries due at or before it are claimable. */
  now: number;
  /** Claim regardless of nextAttemptAt (flush on primary up / queue.flush) ... */
  ignoreSchedule?: boolean;
  /** ... but only deliveries not attempted at or after this time (so a flush attempts each delivery once). */
  notAttemptedSince?: number;
  /** Only deliveries of messages received before this time, due or not (queue lifetime expiry). */
  receivedBefore?: number;
  leaseMs: number;
  /**
   * The lease's holder, and its fencing token: settle and renew change only deliveries still leased
   * to it. A deliverer takes a fresh owner for every claim call, so an attempt whose lease ended and
   * went to a later claim (another deliverer's, or its own) can neither renew nor settle it.
   */
  owner: string;
  /** Maximum number of messages returned. */
  limit: number;
}

/** One claimed message's lease: its id and the claim's owner. */
export interface LeaseRef {
  messageId: string;
  owner: string;
}

export interface QueueStats {
  /** Deliveries waiting (queued), by route. */
  queued: Record<string, number>;
  held: number;
  /** Records kept for the retention period. */
  delivered: number;
  failed: number;
  /** Messages with at least one queued or held delivery. */
  messages: number;
  /** receivedAt of the oldest message with a queued delivery, or null. */
  oldestQueuedAt: number | null;
}

/**
 * Which messages list() returns. `state`, `domain` and `recipient` apply to one delivery: a message
 * is listed when one of its deliveries matches all of those given (held mail for example.com is a
 * held delivery to example.com, not a held delivery elsewhere and a recipient at example.com).
 */
export interface ListFilter {
  /** A delivery in this state (or in any of these states). */
  state?: DeliveryState | DeliveryState[];
  /** A delivery to a recipient in this domain (exact, case-insensitive). */
  domain?: string;
  /** Sender contains this text (case-insensitive); '<>' matches the null sender. */
  sender?: string;
  /** A delivery whose recipient contains this text (case-insensitive). */
  recipient?: string;
  /** Received at or before this epoch ms. */
  receivedBefore?: number;
  /** Newest first (default) or oldest first. */
  order?: 'newest' | 'oldest';
  /** Default 50, at most 1000. */
  limit?: number;
  offset?: number;
}

/** The admin operations that bulk() applies to many messages (remove deletes them). */
export type BulkAction = 'hold' | 'release' | 'retry' | 'remove';

export interface BulkResult {
  /** The messages that changed (remove: that were removed), in the order given. */
  messages: string[];
  /** Deliveries changed (remove: deleted). */
  deliveries: number;
}

/** What happened since a time: for the console's overview. */
export interface Activity {
  /** Messages received (stored) at or after the time. */
  received: number;
  /** Deliveries that became delivered / failed at or after the time. */
  delivered: number;
  failed: number;
}

export interface MessageSummary {
  message: MessageInfo;
  deliveries: Delivery[];
}

export interface MessageDetail extends MessageSummary {
  /** Every attempt, oldest first. */
  attempts: AttemptRecord[];
}

/**
 * The spool's storage port. Every adapter (sqlite, mongo) passes test/store-contract.test.ts.
 * All writes are durable when the promise resolves.
 */
export interface Store {
  /**
   * Store a message and one queued delivery per recipient, due now. `routes` maps each recipient to
   * its next hop. Idempotent on mail.id: returns false (and changes nothing) when the id is known.
   * A large body may be moved rather than copied (the store in its thread, store-thread.ts): the
   * caller's Buffer may be empty once put is called, so take what you need of it (its size) first.
   */
  put(mail: ReceivedMail, routes: Record<string, string>): Promise<boolean>;
  /**
   * Lease claimable queued deliveries to `owner` until now + leaseMs, grouped by message, oldest
   * message first. Claimable: state queued, not leased by anyone (or lease expired), due (or the
   * flush / expiry options). Two concurrent claims never return the same delivery. Held, delivered
   * and failed deliveries are never claimed. A claimed delivery is due at `now` at the latest, so
   * that should its lease end unsettled (a deliverer killed mid-attempt) it is claimable at once,
   * not at the retry time it had.
   */
  claim(options: ClaimOptions): Promise<ClaimedMessage[]>;
  /**
   * Extend leases while their attempts run (the deliverer's heartbeat): the queued or held
   * deliveries of each message still leased to that owner are leased until `until`. Returns the
   * leases that still hold a delivery; one settled, or taken over by another claim after it ended,
   * is not renewed and not returned.
   */
  renew(leases: LeaseRef[], until: number): Promise<LeaseRef[]>;
  /**
   * Record the outcome of an attempt for recipients of one message, and release their lease.
   * Only deliveries still leased by `owner` are changed. Each outcome adds an AttemptRecord.
   * delivered / failed: state set, settledAt = now, kept as a record; deferred: queued again at
   * nextAttemptAt. When no delivery of the message is queued or held any more, its body is removed.
   */
  settle(messageId: string, owner: string, outcomes: Outcome[], now: number): Promise<void>;
  /** The stored raw message. Rejects when unknown or when its body is gone (all delivered/failed). */
  readBody(messageId: string): Promise<Readable>;
  /** The message, every delivery (any state) and every attempt; null when unknown. */
  getMessage(messageId: string): Promise<MessageDetail | null>;
  list(filter: ListFilter): Promise<{ total: number; items: MessageSummary[] }>;
  /** held <- queued for every queued delivery of the message; returns how many changed. */
  hold(messageId: string): Promise<number>;
  /** queued (due now) <- held; returns how many changed. */
  release(messageId: string, now: number): Promise<number>;
  /** Make every queued delivery of the message due now (and drop any lease); returns how many. */
  retryNow(messageId: string, now: number): Promise<number>;
  /** Delete the message, its body, deliveries and attempts; false when unknown. */
  remove(messageId: string): Promise<boolean>;
  /**
   * hold / release / retryNow / remove for many messages with the same rules as the one-message
   * operations, in few durable writes (a console action on a whole filter). Unknown ids are skipped.
   */
  bulk(action: BulkAction, messageIds: string[], now: number): Promise<BulkResult>;
  /** Messages received and deliveries settled at or after `since` (records still kept). */
  activity(since: number): Promise<Activity>;
  /**
   * Atomically mark up to `limit` messages as delay-warned: those received before `receivedBefore`
   * with a queued delivery and not warned yet. Returns them with their queued deliveries.
   */
  takeDelayWarnings(receivedBefore: number, now: number, limit: number): Promise<MessageSummary[]>;
  /** Remove messages whose deliveries are all delivered/failed and settled before `settledBefore`. Returns how many. */
  purge(settledBefore: number): Promise<number>;
  /** Routes that have at least one queued delivery. */
  routes(): Promise<string[]>;
  /** Earliest nextAttemptAt of any queued delivery of a route, or null. */
  nextDue(route: string): Promise<number | null>;
  stats(): Promise<QueueStats>;
  /** A small persistent key-value cache with expiry (recipient verification results). */
  cacheGet(key: string, now: number): Promise<string | null>;
  cachePut(key: string, value: string, expiresAt: number): Promise<void>;
  /** True while the store can take writes. */
  ready(): boolean;
  /**
   * Bytes inside the store's own files that new writes reuse before the file system's (SQLite's
   * free pages, left by delivered mail): DISK_HEADROOM counts them as free. Absent: none.
   */
  spareBytes?(): number;
  close(): Promise<void>;
}

/** The message's recipients, each once in the sender's order; throws when one has no route. Shared by the adapters' put. */
export function routedRecipients(mail: ReceivedMail, routes: Record<string, string>): string[] {
  const recipients = [...new Set(mail.envelope.rcptTo)];
  for (const recipient of recipients) {
    if (typeof routes[recipient] !== 'string') throw new Error(`no route for recipient ${recipient} of message ${mail.id}`);
  }
  return recipients;
}
