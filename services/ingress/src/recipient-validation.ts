import { splitAddress } from '@backupmx/shared/rules/address.ts';
import type { Config, Target } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { routeForRecipient, routeTargets } from '@backupmx/shared/rules/routing.ts';
import type { SmtpReply } from '@backupmx/shared/rules/smtp-reply.ts';
import { createRecipientFile, listAccepts } from './recipient-list.ts';
import type { Verifier, WhenDown } from './recipient-verifier.ts';

type Rule =
  | { kind: 'list'; inline: ReadonlySet<string>; file: ReturnType<typeof createRecipientFile> | null }
  | { kind: 'verify'; whenDown: WhenDown; route: string; targets: Target[] };

/** Some domain asks the primary (so ingress needs the store for the cache). */
export function usesVerify(config: Pick<Config, 'domains'>): boolean {
  return Object.values(config.domains).some((settings) => settings.VERIFY_RECIPIENTS === true);
}

/**
 * Which recipients of our relay domains exist, per domain (the `domains` section): a static list
 * (RECIPIENTS inline and/or RECIPIENTS_FILE), a callout to the primary (VERIFY_RECIPIENTS), or, for
 * a domain with neither, every recipient (Postfix without relay_recipient_maps).
 */
export function createRecipientValidation(config: Pick<Config, 'domains' | 'PRIMARY'>, verifier: Verifier | null, log: Logger, now: () => number = Date.now) {
  const rules = new Map<string, Rule>();
  for (const [domain, settings] of Object.entries(config.domains)) {
    if (settings.VERIFY_RECIPIENTS) {
      const route = routeForRecipient(`postmaster@${domain}`, config);
      const targets = routeTargets(route);
      rules.set(domain, { kind: 'verify', whenDown: settings.VERIFY_WHEN_DOWN ?? 'accept', route, targets });
    } else if (settings.RECIPIENTS || settings.RECIPIENTS_FILE) {
      const file = settings.RECIPIENTS_FILE ? createRecipientFile(settings.RECIPIENTS_FILE, log) : null;
      file?.entries(now());
      rules.set(domain, { kind: 'list', inline: new Set(settings.RECIPIENTS ?? []), file });
    }
  }
  if (rules.size > 0 && [...rules.values()].some((rule) => rule.kind === 'verify') && !verifier) throw new Error('VERIFY_RECIPIENTS needs a store for its cache');

  return {
    /** Null to accept the recipient (of a relay domain), else the refusal. */
    async check(address: string): Promise<SmtpReply | null> {
      const domain = splitAddress(address)?.domain;
      const rule = domain === undefined ? undefined : rules.get(domain);
      if (!rule) return null;
      if (rule.kind === 'verify') return verifier ? verifier.verify(address, rule.route, rule.targets, rule.whenDown) : null;
      if (listAccepts(rule.inline, address)) return null;
      if (rule.file) {
        let entries: ReadonlySet<string>;
        try {
          entries = rule.file.entries(now());
        } catch {
          return { code: 451, status: '4.3.0', text: `<${address}>: Temporary lookup failure` };
        }
        if (listAccepts(entries, address)) return null;
      }
      return { code: 550, status: '5.1.1', text: `<${address}>: Recipient address rejected: User unknown in relay recipient table` };
    },
  };
}

export type RecipientValidation = ReturnType<typeof createRecipientValidation>;
