import type { Outcome } from './envelope.ts';

/** The parts of nodemailer's result and error we read. */
export interface SendResult {
  accepted?: unknown[];
  rejectedErrors?: SendError[];
  response?: string;
}
export interface SendError {
  message: string;
  /** nodemailer's error code (ECONNECTION, EENVELOPE, ...) and the command that failed ('CONN': connection, greeting, or lost). */
  code?: string;
  command?: string;
  responseCode?: number;
  response?: string;
  recipient?: string;
  rejectedErrors?: SendError[];
}

export type Verdict = { recipient: string; result: 'delivered' | 'deferred' | 'failed'; reply: string };

const reply = (error: SendError) => (error.response ?? error.message).replace(/\s+/g, ' ').trim();
const classify = (error: SendError): 'deferred' | 'failed' => (error.responseCode !== undefined && error.responseCode >= 500 ? 'failed' : 'deferred');
/** Failures of the connection itself (refused, lost, a 5xx greeting) never fail a recipient (Postfix smtp_skip_5xx_greeting). */
const classifyShared = (error: SendError): 'deferred' | 'failed' => (error.command === 'CONN' ? 'deferred' : classify(error));

/**
 * Per-recipient verdicts of one SMTP transaction (RFC 5321 4.2.1): 2xx delivered, 4xx or no
 * answer (connection failure, timeout, lost connection, a refused greeting) deferred, 5xx failed.
 * A recipient refused at RCPT gets its own reply, even when DATA failed afterwards; the others
 * share the reply to DATA (or the error that ended the transaction).
 */
export function verdicts(recipients: readonly string[], outcome: { result: SendResult } | { error: SendError }): Verdict[] {
  const rejected = 'result' in outcome ? outcome.result.rejectedErrors : outcome.error.rejectedErrors;
  const byRecipient = new Map<string, SendError>();
  for (const error of rejected ?? []) if (error.recipient !== undefined) byRecipient.set(error.recipient.toLowerCase(), error);
  return recipients.map((recipient) => {
    const own = byRecipient.get(recipient.toLowerCase());
    if (own) return { recipient, result: classify(own), reply: reply(own) };
    if ('result' in outcome) return { recipient, result: 'delivered', reply: (outcome.result.response ?? '250 OK').trim() };
    return { recipient, result: classifyShared(outcome.error), reply: reply(outcome.error) };
  });
}

/** Turn verdicts into store outcomes, scheduling deferred ones; `nextHop`: the target that gave the replies, when given. */
export function toOutcomes(list: readonly Verdict[], retryAt: (recipient: string) => number, nextHop?: string | null): Outcome[] {
  const hop = nextHop === undefined ? {} : { nextHop };
  return list.map((verdict) =>
    verdict.result === 'deferred'
      ? { ...verdict, result: 'deferred', nextAttemptAt: retryAt(verdict.recipient), ...hop }
      : { ...verdict, result: verdict.result, ...hop },
  );
}
