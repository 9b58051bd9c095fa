/**
 * MEMORY_BUDGET: message bytes held in memory across all SMTP sessions at once. Each DATA reserves
 * its bytes as they arrive and gives them back when its reply is decided; a DATA whose next chunk
 * does not fit stops being kept (the rest is read and discarded, as smtp-server requires) and gets
 * `452 4.3.1 Insufficient system storage`, as Postfix answers when it is short of room. The sender
 * keeps the message and retries later; the process never runs out of memory.
 */
import { memoryHeld } from '@backupmx/shared/runtime/metrics.ts';

export interface MemoryBudget {
  /** Take `bytes` for one message; false (and nothing taken) when they do not fit. */
  reserve(bytes: number): boolean;
  release(bytes: number): void;
  /** Bytes held now. */
  held(): number;
  readonly limit: number;
}

export function createMemoryBudget(limit: number): MemoryBudget {
  let held = 0;
  return {
    limit,
    reserve(bytes) {
      if (held + bytes > limit) return false;
      held += bytes;
      memoryHeld.set(held);
      return true;
    },
    release(bytes) {
      held = Math.max(0, held - bytes);
      memoryHeld.set(held);
    },
    held: () => held,
  };
}
