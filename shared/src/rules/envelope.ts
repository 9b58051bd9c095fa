/** The envelope of a message and the outcome of a delivery attempt: the data the rules decide on. */

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

export type Outcome =
  | { recipient: string; result: 'delivered'; reply: string; nextHop?: string | null }
  | { recipient: string; result: 'deferred'; reply: string; nextAttemptAt: number; nextHop?: string | null }
  | { recipient: string; result: 'failed'; reply: string; nextHop?: string | null };
