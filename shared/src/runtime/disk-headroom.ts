import { statfsSync } from 'node:fs';
import { diskFree, diskLow } from './metrics.ts';

/**
 * DISK_HEADROOM: new mail is refused while the file system of DATA_DIR has less free space than
 * this, so that the queue's own writes (claims, settles, deletions) always find room and the spool
 * drains and recovers by itself (Postfix: queue_minfree, 1.5 x message_size_limit).
 */
export interface DiskHeadroom {
  /** Free bytes now, the store's reusable space included (measured each time); null when the directory cannot be measured. */
  free(): number | null;
  /** True while free space is below the threshold. */
  low(): boolean;
  readonly threshold: number;
}

/** `spare`: bytes inside the store's files that it reuses first (Store.spareBytes), counted as free. */
export function createDiskHeadroom(dir: string, threshold: number, spare: () => number = () => 0): DiskHeadroom {
  // Measured at every question (a statfs and a PRAGMA: microseconds): at hundreds of messages a
  // second a cached figure would let the disk fill between two looks.
  const measure = (): number | null => {
    let free: number | null;
    try {
      const stats = statfsSync(dir);
      free = stats.bavail * stats.bsize + spare();
    } catch {
      free = null; // not there (yet): the store reports that itself
    }
    if (free !== null) diskFree.set(free);
    diskLow.set(free !== null && free < threshold ? 1 : 0);
    return free;
  };
  return {
    threshold,
    free: measure,
    low() {
      const bytes = measure();
      return bytes !== null && bytes < threshold;
    },
  };
}

/** What /readyz says about it: why new mail is refused, when it is. */
export function diskDetail(disk: DiskHeadroom, consequence = 'refusing new mail (452 4.3.1)'): Record<string, string> {
  const free = disk.free();
  if (free === null || free >= disk.threshold) return {};
  return { disk: `${consequence}: ${free} bytes free in DATA_DIR, below DISK_HEADROOM ${disk.threshold}; the queue still drains` };
}
