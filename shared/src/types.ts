/** The SMTP envelope of one message, as the sender gave it. */
export interface Envelope {
  /** Reverse-path without angle brackets; '' for the null sender `<>`. */
  mailFrom: string;
  /** Forward-paths without angle brackets, in the order the sender gave them. */
  rcptTo: string[];
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

export type DeliveryState = 'queued' | 'delivered' | 'failed';

/** One recipient of one message on its way to one next hop ("route"). */
export interface Delivery {
  messageId: string;
  recipient: string;
  /** Next-hop target the recipient's domain is routed to, e.g. "10.0.0.5:25". */
  route: string;
  state: DeliveryState;
  attempts: number;
  /** Epoch ms when the next attempt is due (queued only). */
  nextAttemptAt: number;
  lastAttemptAt: number | null;
  /** The last reply of the next hop, or the local error, for this recipient. */
  lastReply: string | null;
}

/** Metadata of a stored message, without its body. */
export interface MessageInfo {
  id: string;
  mailFrom: string;
  recipients: string[];
  size: number;
  receivedAt: number;
}

/** What a deliverer gets from a claim: one message and its claimed recipients for one route. */
export interface ClaimedMessage {
  message: MessageInfo;
  route: string;
  deliveries: Delivery[];
}

export type Outcome =
  | { recipient: string; result: 'delivered'; reply: string }
  | { recipient: string; result: 'deferred'; reply: string; nextAttemptAt: number }
  | { recipient: string; result: 'failed'; reply: string };
