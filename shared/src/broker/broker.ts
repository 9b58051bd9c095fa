import type { TlsStatus } from '../rules/next-hop-tls.ts';
import type { Envelope, ReceivedMail } from '../types.ts';

/** RabbitMQ names, in one place. */
export const TOPOLOGY = {
  mailExchange: 'backupmx.mail',
  eventsExchange: 'backupmx.events',
  spoolQueue: 'backupmx.spool',
  deadQueue: 'backupmx.dead',
  mailReceived: 'mail.received',
  /** Redeliveries of one message before RabbitMQ moves it to the dead-letter queue. */
  deliveryLimit: 20,
} as const;

export type EventKey = 'primary.up' | 'primary.down' | 'primary.status' | 'mail.spooled' | 'queue.flush';

/** Payload of primary.up / primary.down / primary.status: one probed target. */
export interface PrimaryEvent {
  target: string;
  state: 'unknown' | 'up' | 'down';
  since: number;
  lastError?: string | null;
  latencyMs?: number | null;
  /** What the last probe that reached EHLO saw of the target's STARTTLS and certificate. */
  tls?: TlsStatus | null;
}
export interface SpooledEvent {
  id: string;
  routes: string[];
}
export interface FlushEvent {
  /** A route, or absent for every route. */
  route?: string;
}
export type EventPayload = PrimaryEvent | SpooledEvent | FlushEvent;

/**
 * What the spool's handler makes of one delivery of `mail.received`: stored durably (acknowledge),
 * or not understood (dead-letter it; never drop it). A thrown error means "not now": it is retried.
 */
export type MailDisposition = 'stored' | 'dead';

/** A message on mail.received that could not even be decoded into a ReceivedMail. */
export interface UndecodableMail {
  id: string;
  error: string;
}

/** A message in the dead-letter queue (RabbitMQ backupmx.dead, or DATA_DIR/dead in one process). */
export interface DeadLetter {
  /** The queue id; `sha256:<hex>` of the body for a message that came without one. */
  id: string;
  /** The envelope it travelled with, or null when that could not be read. */
  envelope: Pick<Envelope, 'mailFrom' | 'rcptTo'> | null;
  size: number;
  receivedAt: number | null;
  /** When it was dead-lettered and why (RabbitMQ: rejected, delivery_limit, ...), when known. */
  deadAt: number | null;
  reason: string | null;
}

/** Show and replay the dead-letter queue (the admin API). Nothing consumes it automatically. */
export interface DeadLetters {
  /** Up to `limit` dead letters, oldest first, and how many there are in all. */
  list(limit: number): Promise<{ total: number; items: DeadLetter[] }>;
  /** Publish it on mail.received again (the spool takes it like new mail) and drop it from the dead letters; false when unknown. */
  replay(id: string): Promise<boolean>;
}

export interface Broker {
  /** Resolves once the broker holds the message durably (publisher confirm); rejects otherwise. */
  publishMail(mail: ReceivedMail): Promise<void>;
  /** Consume mail.received (competing consumers). */
  consumeMail(handler: (mail: ReceivedMail) => Promise<MailDisposition>, prefetch: number): Promise<void>;
  /** Best effort: events are hints; correctness never depends on them. */
  publishEvent(key: EventKey, payload: EventPayload): void;
  /** Every instance gets every event of these keys. */
  subscribe(keys: EventKey[], handler: (key: EventKey, payload: EventPayload) => void): Promise<void>;
  connected(): boolean;
  /** The dead-letter queue, where the broker has one. */
  dead?: DeadLetters;
  /** Stop consumers, wait for handlers in flight, then close. */
  close(): Promise<void>;
}
