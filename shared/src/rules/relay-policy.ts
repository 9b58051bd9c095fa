import { splitAddress } from './address.ts';
import type { SmtpReply } from './smtp-reply.ts';

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

/**
 * The address with its domain in ASCII (IDNA A-labels, lower case). smtp-server turns an A-label
 * domain into Unicode; relay domains are configured in ASCII and the primary may not speak
 * SMTPUTF8, so both the relay check and the envelope we keep use the ASCII form. The local part is
 * left as it is. An address whose domain has no ASCII form is returned unchanged (and then matches
 * no relay domain).
 */
export function asciiAddress(address: string): string {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1 || address.endsWith(']')) return address;
  const domain = address.slice(at + 1);
  if (/^[\x21-\x7e]+$/.test(domain)) return address;
  const ascii = domainToAscii(domain);
  return ascii ? `${address.slice(0, at)}@${ascii}` : address;
}

/**
 * A domain's ASCII form (IDNA, UTS #46) by the WHATWG URL host parser, which every runtime has
 * (as Node's url.domainToASCII): '' when it has none. Characters that would end a URL's host are
 * refused first, so only the domain itself is parsed.
 */
function domainToAscii(domain: string): string {
  if (/[\s/?#:@\\%[\]]/.test(domain)) return '';
  try {
    return new URL(`http://${domain}/`).hostname;
  } catch {
    return '';
  }
}
