import { readFileSync, statSync } from 'node:fs';
import { splitAddress } from '@backupmx/shared/rules/address.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';

/**
 * Parse a recipient list: one address or `@domain` per line; blank lines and `#` comments are
 * skipped, and so is anything after the first word (so a Postfix map source such as
 * `user@example.com OK` works). Entries are lower-cased.
 */
export function parseRecipientList(text: string): Set<string> {
  const entries = new Set<string>();
  for (const raw of text.split(/\r?\n/)) {
    const word = raw.replace(/#.*/, '').trim().split(/\s+/)[0];
    if (word && word.includes('@')) entries.add(word.toLowerCase());
  }
  return entries;
}

/** The address, or its whole domain (`@domain`), is listed. Case-insensitive; one trailing dot ignored. */
export function listAccepts(entries: ReadonlySet<string>, address: string): boolean {
  const parts = splitAddress(address);
  if (!parts) return false;
  const local = parts.local.toLowerCase();
  return entries.has(`${local}@${parts.domain}`) || entries.has(`@${parts.domain}`);
}

/**
 * A recipient file, re-read when it changes (checked at most every `checkEveryMs` when asked).
 * If it cannot be read, the last list read stays in force and the error is logged; if it never
 * could be read, `entries` throws (the caller answers 451 4.3.0, as Postfix does for a lookup
 * failure).
 */
export function createRecipientFile(path: string, log: Logger, checkEveryMs = 1000) {
  let entries: Set<string> | null = null;
  let signature = '';
  let checkedAt = -Infinity;

  function refresh(now: number): void {
    checkedAt = now;
    try {
      const stat = statSync(path);
      const current = `${stat.ino}:${stat.size}:${stat.mtimeMs}`;
      if (current === signature && entries) return;
      const next = parseRecipientList(readFileSync(path, 'utf8'));
      const first = entries === null;
      entries = next;
      signature = current;
      log.info({ path, recipients: next.size }, first ? 'recipient list loaded' : 'recipient list reloaded');
    } catch (error) {
      log.error({ path, err: error }, 'cannot read the recipient list; keeping the last one read');
    }
  }

  return {
    entries(now: number): ReadonlySet<string> {
      if (now - checkedAt >= checkEveryMs) refresh(now);
      if (!entries) throw new Error(`cannot read recipient list ${path}`);
      return entries;
    },
  };
}
