import { isSmtpReply, statusOf } from '@backupmx/shared/rules/dsn-policy.ts';
import type { ReportEntry } from '@backupmx/shared/mail/reports.ts';
import type { Verdict } from '../../../shared/src/rules/outcomes.ts';

/** A status of the right class for the action (a broken server may give 550 4.x.x). */
function ofClass(status: string, digit: '2' | '4' | '5'): string {
  return status.startsWith(digit) ? status : `${digit}${status.slice(1)}`;
}

/**
 * What one attempt asks to report (RFC 3464, RFC 3461 5.2.2): every recipient the next hop refused
 * for good (failed); every recipient handed to a next hop that does not offer DSN (relayed: it
 * will not report success, so we do, when the sender asked NOTIFY=SUCCESS). A hop that offers DSN
 * got the sender's parameters and reports on what it accepted itself. Whether the sender wants
 * each report (NOTIFY) is decided when it is sent.
 */
export function reportEntries(list: readonly Verdict[], hop: { remoteMta: string | null; dsn: boolean }, now: number): ReportEntry[] {
  const entries: ReportEntry[] = [];
  for (const verdict of list) {
    const remoteMta = isSmtpReply(verdict.reply) ? hop.remoteMta : null;
    if (verdict.result === 'failed') {
      entries.push({ recipient: verdict.recipient, action: 'failed', status: ofClass(statusOf(verdict.reply, '5.0.0'), '5'), remoteMta, reply: verdict.reply, lastAttemptAt: now });
    } else if (verdict.result === 'delivered' && !hop.dsn) {
      entries.push({ recipient: verdict.recipient, action: 'relayed', status: ofClass(statusOf(verdict.reply, '2.0.0'), '2'), remoteMta, reply: verdict.reply, lastAttemptAt: now });
    }
  }
  return entries;
}
