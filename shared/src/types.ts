/** RFC 3461 parameters of one recipient, as the sender gave them. */
export interface RecipientDsn {
  /** NOTIFY: ['NEVER'] or any of SUCCESS, FAILURE, DELAY; absent when not given. */
  notify?: string[];
  /** ORCPT, decoded: `rfc822;user@example.com`. */
  orcpt?: string;
}

/** The SMTP envelope of one message, as the sender gave it. */
export interface Envelope {
  /** Reverse-path without angle brackets; '' for the null sender `<>`. */
  mailFrom: string;
  /** Forward-paths without angle brackets, in the order the sender gave them. */
  rcptTo: string[];
  /** RFC 3461 MAIL parameters. */
  ret?: 'FULL' | 'HDRS';
  envid?: string;
  /** RFC 3461 RCPT parameters by recipient (only recipients that gave any). */
  dsn?: Record<string, RecipientDsn>;
  /** The sender asked for SMTPUTF8 / BODY=8BITMIME. */
  smtputf8?: boolean;
  body8bit?: boolean;
  /** Who handed the message to us (for DSN Received-From-MTA): EHLO name and IP. */
  clientHelo?: string;
  clientAddress?: string;
}

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

export type Outcome =
  | { recipient: string; result: 'delivered'; reply: string; nextHop?: string | null }
  | { recipient: string; result: 'deferred'; reply: string; nextAttemptAt: number; nextHop?: string | null }
  | { recipient: string; result: 'failed'; reply: string; nextHop?: string | null };
