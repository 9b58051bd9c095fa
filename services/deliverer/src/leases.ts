import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import type { LeaseRef, Store } from '@backupmx/shared/store/store.ts';

/** One claimed message's lease while its attempt runs. */
export interface HeldLease extends LeaseRef {
  /** Where the lease ends as far as this deliverer knows: the claim's, or the last renewal's, time + DELIVERY_LEASE. */
  until: number;
  /** Why the attempt must stop sending (lease taken over, or about to end unrenewed); null while it holds. */
  lost: string | null;
  /** Aborted when the lease is lost: the attempt's SMTP transaction is cut off (before its final dot, when that was not written yet). */
  abort: AbortController;
}

/**
 * The deliverer's heartbeat: every quarter of DELIVERY_LEASE, one store.renew for every lease held,
 * so that leases can be short (a killed deliverer's work returns within DELIVERY_LEASE) however
 * long an attempt takes. A lease that the store no longer holds for us (it ended and another claim
 * took it) is lost at once; one that could not be renewed (store not answering) is given up a
 * quarter of the lease before it ends. Losing a lease cuts the attempt's SMTP connection, so the
 * message's final dot is not sent after someone else may have started: two deliverers never send
 * one delivery at once. What the primary answered before that is still settled (fenced by the
 * claim's owner: a settle over another's claim changes nothing).
 */
export function createLeaseKeeper(store: Pick<Store, 'renew'>, leaseMs: number, log: Logger) {
  const held = new Set<HeldLease>();
  const every = Math.max(25, Math.floor(leaseMs / 4));
  let timer: NodeJS.Timeout | null = null;
  let beating: Promise<void> | null = null;

  function lose(lease: HeldLease, reason: string): void {
    if (lease.lost) return;
    lease.lost = reason;
    log.warn({ queueId: lease.messageId, owner: lease.owner, reason }, 'delivery lease lost; stopping its attempt');
    lease.abort.abort(new Error(reason));
  }

  async function beat(): Promise<void> {
    const list = [...held].filter((lease) => !lease.lost);
    if (list.length > 0) {
      const at = Date.now();
      try {
        const kept = new Set((await store.renew(list.map(({ messageId, owner }) => ({ messageId, owner })), at + leaseMs)).map((lease) => `${lease.messageId}\n${lease.owner}`));
        for (const lease of list) {
          if (!held.has(lease)) continue; // settled meanwhile
          if (kept.has(`${lease.messageId}\n${lease.owner}`)) lease.until = at + leaseMs;
          else lose(lease, 'the lease was taken over');
        }
      } catch (error) {
        log.warn({ err: error, leases: list.length }, 'delivery leases could not be renewed');
      }
    }
    const now = Date.now();
    for (const lease of held) if (lease.until - now < every) lose(lease, 'the lease could not be renewed before its end');
  }

  return {
    /** Track a lease from its claim (`until`: the claim's now + DELIVERY_LEASE) until release(). */
    hold(messageId: string, owner: string, until: number): HeldLease {
      const lease: HeldLease = { messageId, owner, until, lost: null, abort: new AbortController() };
      held.add(lease);
      return lease;
    },
    release(lease: HeldLease): void {
      held.delete(lease);
    },
    start(): void {
      timer = setInterval(() => {
        if (!beating) beating = beat().finally(() => (beating = null));
      }, every);
    },
    async stop(): Promise<void> {
      if (timer) clearInterval(timer);
      await beating;
    },
  };
}
