import type { Readable } from 'node:stream';
import type { ClaimedMessage, Delivery, MessageInfo, Outcome, ReceivedMail } from './types.ts';

export interface ClaimOptions {
  route: string;
  /** Epoch ms; deliveries due at or before it are claimable. */
  now: number;
  /** Claim regardless of nextAttemptAt (flush on primary up / queue.flush) ... */
  ignoreSchedule?: boolean;
  /** ... but only deliveries not attempted at or after this time (so a flush attempts each delivery once). */
  notAttemptedSince?: number;
  leaseMs: number;
  owner: string;
  /** Maximum number of messages returned. */
  limit: number;
}

export interface QueueStats {
  /** Deliveries waiting, by route. */
  queued: Record<string, number>;
  failed: number;
  messages: number;
  /** receivedAt of the oldest message with a queued delivery, or null. */
  oldestQueuedAt: number | null;
}

/**
 * The spool's storage port. Every adapter (sqlite, mongo) passes test/store-contract.test.ts.
 * All writes are durable when the promise resolves.
 */
export interface Store {
  /**
   * Store a message and one queued delivery per recipient, due now. `routes` maps each recipient to
   * its next hop. Idempotent on mail.id: returns false (and changes nothing) when the id is known.
   */
  put(mail: ReceivedMail, routes: Record<string, string>): Promise<boolean>;
  /**
   * Lease due, unleased, queued deliveries of one route to `owner` until now + leaseMs, grouped by
   * message, oldest message first. Two concurrent claims never return the same delivery.
   */
  claim(options: ClaimOptions): Promise<ClaimedMessage[]>;
  /**
   * Record the outcome of an attempt for recipients of one message, and release their lease.
   * Only deliveries still leased by `owner` are changed. delivered: removed; deferred: queued again
   * at nextAttemptAt; failed: kept with state failed and the reply. A message with no delivery left
   * is removed with its body.
   */
  settle(messageId: string, owner: string, outcomes: Outcome[], now: number): Promise<void>;
  /** The stored raw message. Throws when unknown. */
  readBody(messageId: string): Promise<Readable>;
  getMessage(messageId: string): Promise<{ message: MessageInfo; deliveries: Delivery[] } | null>;
  /** Routes that have at least one queued delivery. */
  routes(): Promise<string[]>;
  /** Earliest nextAttemptAt of any queued delivery of a route, or null. */
  nextDue(route: string): Promise<number | null>;
  stats(): Promise<QueueStats>;
  /** True while the store can take writes. */
  ready(): boolean;
  close(): Promise<void>;
}
