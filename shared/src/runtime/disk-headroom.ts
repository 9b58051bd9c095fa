import { statfsSync } from 'node:fs';
import { diskFree, diskLow } from './metrics.ts';

/**
 * DISK_HEADROOM: new mail is refused while the file system of DATA_DIR has less free space than
 * this, so that the queue's own writes (claims, settles, deletions) always find room and the spool
 * drains and recovers by itself (Postfix: queue_minfree, 1.5 x message_size_limit).
 */
export interface DiskHeadroom {
  /**
   * One measurement: free bytes now, the store's reusable space included (null when the directory
   * cannot be measured), and whether that is below the threshold.
   */
  check(): { free: number | null; low: boolean };
  readonly threshold: number;
}

/**
 * `spare`: bytes inside the store's files that it reuses first (Store.spareBytes: SQLite's free
 * pages, left by delivered mail), counted as free, so that a drained spool takes mail again.
 * They cannot hold the store's journal (SQLite's WAL grows, and a checkpoint may grow the file, on
 * the file system itself), so at least half the threshold must be free on the file system as well.
 */
export function createDiskHeadroom(dir: string, threshold: number, spare: () => number = () => 0): DiskHeadroom {
  // Measured at every question (a statfs and a PRAGMA: microseconds): at hundreds of messages a
  // second a cached figure would let the disk fill between two looks.
  const measure = (): { free: number; real: number } | null => {
    try {
      const stats = statfsSync(dir);
      const real = stats.bavail * stats.bsize;
      return { real, free: real + spare() };
    } catch {
      return null; // not there (yet): the store reports that itself
    }
  };
  const check = () => {
    const bytes = measure();
    const low = bytes !== null && (bytes.free < threshold || bytes.real < threshold / 2);
    if (bytes) diskFree.set(bytes.free);
    diskLow.set(low ? 1 : 0);
    return { free: bytes?.free ?? null, low };
  };
  return { threshold, check };
}

/** What /readyz says about it: why new mail is refused, when it is. */
export function diskDetail(disk: DiskHeadroom, consequence = 'refusing new mail (452 4.3.1)'): Record<string, string> {
  const { free, low } = disk.check();
  if (!low) return {};
  return { disk: `${consequence}: ${free} bytes free in DATA_DIR, below DISK_HEADROOM ${disk.threshold}; the queue still drains` };
}
