import { SpanStatusCode, type Span } from '@opentelemetry/api';
import { deliveryAttempts } from '@backupmx/shared/runtime/metrics.ts';

/** What this module reads of a delivery attempt (smtp-client's Attempt). */
type Attempt = { target: string } & ({ result: { response?: string } } | { error: { message: string; response?: string; responseCode?: number } });

/** The next hop's reply code to the transaction (DATA reply, or the error's), or null without one. */
export function replyCode(attempt: Attempt): number | null {
  if ('error' in attempt) return attempt.error.responseCode ?? null;
  const code = Number(/^\d{3}/.exec(attempt.result.response ?? '')?.[0]);
  return Number.isFinite(code) && code > 0 ? code : null;
}

/**
 * Put one attempt on its smtp.deliver span (next hop, reply code, per-outcome counts; an error is
 * recorded) and count each recipient's outcome in backupmx_delivery_attempts_total.
 */
export function recordAttempt(span: Span, route: string, attempt: Attempt, verdicts: ReadonlyArray<{ result: 'delivered' | 'deferred' | 'failed' }>): void {
  const counts = { delivered: 0, deferred: 0, failed: 0 };
  for (const verdict of verdicts) {
    counts[verdict.result] += 1;
    deliveryAttempts.inc({ route, outcome: verdict.result });
  }
  const code = replyCode(attempt);
  span.setAttributes({
    'backupmx.next_hop': attempt.target,
    'backupmx.delivered': counts.delivered,
    'backupmx.deferred': counts.deferred,
    'backupmx.failed': counts.failed,
    ...(code === null ? {} : { 'backupmx.reply_code': code }),
  });
  if ('error' in attempt) {
    span.recordException({ name: 'SmtpError', message: (attempt.error.response ?? attempt.error.message).trim() });
    span.setStatus({ code: SpanStatusCode.ERROR, message: attempt.error.message });
  }
}
