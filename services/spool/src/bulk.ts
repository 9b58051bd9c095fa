import type { BulkAction, BulkResult, ListFilter, Store } from '@backupmx/shared/store/store.ts';

/** The operator's actions on messages, as the API, the CLI and the console name them. */
export const ACTIONS = ['retry', 'hold', 'release', 'delete'] as const;
export type Action = (typeof ACTIONS)[number];

const STORE_ACTION: Record<Action, BulkAction> = { retry: 'retry', hold: 'hold', release: 'release', delete: 'remove' };

/** Most messages one action on a filter touches; more: run it again. */
export const MAX_BULK = 100_000;

/**
 * Every message matching `filter` (oldest first), up to `max`, collected before anything is changed.
 * A filter action should carry `receivedBefore` (the time it was counted at), so that mail arriving
 * meanwhile is not swept in.
 */
export async function matchingIds(store: Store, filter: ListFilter, max = MAX_BULK): Promise<{ ids: string[]; total: number }> {
  const ids = new Set<string>();
  let total = 0;
  for (let offset = 0; ids.size < max; offset += 1000) {
    const page = await store.list({ ...filter, order: 'oldest', limit: Math.min(1000, max - ids.size), offset });
    total = page.total;
    for (const item of page.items) ids.add(item.message.id);
    if (page.items.length === 0 || offset + page.items.length >= page.total) break;
  }
  return { ids: [...ids], total };
}

/** Apply one action to messages by id (the store's bulk operation). */
export function applyAction(store: Store, action: Action, ids: string[], now: number): Promise<BulkResult> {
  return store.bulk(STORE_ACTION[action], ids, now);
}
