export type { Envelope, Outcome, RecipientDsn } from './rules/envelope.ts';
import type { Envelope } from './rules/envelope.ts';

/** What ingress publishes on `mail.received` and the spool stores. */
export interface ReceivedMail {
  /** Queue id: also the AMQP messageId. */
  id: string;
  envelope: Envelope;
  /** The raw RFC 5322 message with our Received header on top. */
  body: Buffer;
  /** Epoch milliseconds when ingress answered 250. */
  receivedAt: number;
  /** W3C trace context (traceparent, tracestate) when there is one. */
  trace?: Record<string, string>;
}

/**
 * queued: waiting for (another) attempt; held: kept, never attempted until released;
 * delivered / failed: final, kept as a record for the retention period.
 */
export type DeliveryState = 'queued' | 'held' | 'delivered' | 'failed';

/** One recipient of one message on its way to one next hop ("route"). */
export interface Delivery {
  messageId: string;
  recipient: string;
  /** Next-hop route the recipient's domain is routed to, e.g. "10.0.0.5:25" or "mx:example.com". */
  route: string;
  state: DeliveryState;
  attempts: number;
  /** Epoch ms when the next attempt is due (queued only). */
  nextAttemptAt: number;
  lastAttemptAt: number | null;
  /** The last reply of the next hop, or the local error, for this recipient. */
  lastReply: string | null;
  /** The next hop that gave lastReply (host:port), when there was one. */
  lastNextHop: string | null;
  /** When the delivery became delivered or failed. */
  settledAt: number | null;
}

/** One attempt for one recipient: the history an administrator reads. */
export interface AttemptRecord {
  recipient: string;
  at: number;
  nextHop: string | null;
  result: 'delivered' | 'deferred' | 'failed';
  reply: string;
}

/** Metadata of a stored message, without its body. */
export interface MessageInfo {
  id: string;
  mailFrom: string;
  recipients: string[];
  envelope: Envelope;
  size: number;
  receivedAt: number;
  trace: Record<string, string>;
  /** When a delay notice was sent for this message (DELAY_WARNING), else null. */
  delayWarnedAt: number | null;
}

/** What a deliverer gets from a claim: one message and its claimed recipients for one route. */
export interface ClaimedMessage {
  message: MessageInfo;
  route: string;
  deliveries: Delivery[];
}

