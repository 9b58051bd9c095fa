import { splitAddress } from '@backupmx/shared/address.ts';
import type { SmtpReply } from '@backupmx/shared/smtp-reply.ts';

/**
 * Decide whether we take a recipient. We relay only to the domains we back up, and refuse any
 * sender-specified routing (Postfix: reject_unauth_destination with allow_untrusted_routing=no):
 * source routes, the percent hack, bang paths, and quoted local parts that hide another '@'.
 * Returns null when the recipient is acceptable, else the reply to give.
 */
export function checkRecipient(address: string, relayDomains: ReadonlySet<string>): SmtpReply | null {
  const denied = (why: string): SmtpReply => ({ code: 550, status: '5.7.1', text: `<${address}>: Relay access denied (${why})` });
  if (address.startsWith('@') || /^@[^:]*:/.test(address)) return denied('source route');
  const parts = splitAddress(address);
  if (!parts) return denied('no domain');
  if (parts.domain.startsWith('[')) return denied('address literal');
  if (!relayDomains.has(parts.domain)) return denied('not a relay domain');
  if (parts.local.includes('@')) return denied('routing in local part');
  if (/[%!]/.test(parts.local)) return denied('routing in local part');
  return null;
}
