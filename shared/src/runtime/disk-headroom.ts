import { statfsSync } from 'node:fs';
import { diskFree, diskLow } from './metrics.ts';

/**
 * DISK_HEADROOM: new mail is refused while the file system of DATA_DIR has less free space than
 * this, so that the queue's own writes (claims, settles, deletions) always find room and the spool
 * drains and recovers by itself (Postfix: queue_minfree, 1.5 x message_size_limit).
 */
export interface DiskHeadroom {
  /**
   * Free bytes (the store's reusable space included; null when the directory cannot be measured)
   * less what was admitted since they were measured, and whether that is below the threshold.
   */
  check(): { free: number | null; low: boolean };
  /**
   * `bytes` of mail about to be written: counted as used from now until a measurement taken after
   * their write, so that a burst between two measurements cannot overrun the headroom. Call the
   * function returned once the write is over (done or failed).
   */
  admit(bytes: number): () => void;
  readonly threshold: number;
}

/** A measurement is reused for this long while the free space is well above the threshold. */
export const MEASURE_EVERY_MS = 250;
/**
 * Each admitted byte counts this many times: the store writes it to SQLite's WAL, then to the
 * database file at a checkpoint (with some index and page overhead on top).
 */
const BYTES_PER_BYTE = 3;

export interface DiskHeadroomOptions {
  /** Bytes inside the store's files that it reuses first (see createDiskHeadroom). */
  spare?: () => number;
  everyMs?: number;
  now?: () => number;
  /** The file system's answer (tests give their own). */
  statfs?: (dir: string) => { bavail: number; bsize: number };
}

/**
 * `spare`: bytes inside the store's files that it reuses first (Store.spareBytes: SQLite's free
 * pages, left by delivered mail), counted as free, so that a drained spool takes mail again.
 * They cannot hold the store's journal (SQLite's WAL grows, and a checkpoint may grow the file, on
 * the file system itself), so at least half the threshold must be free on the file system as well.
 *
 * A statfs and SQLite's free-page PRAGMAs are asked at most every `everyMs` (at hundreds of
 * messages a second they were 3% of ingress's time, at every MAIL and message), and at every
 * question once the estimate is within twice the threshold: between two measurements the mail
 * admitted since is subtracted (three times its size), so the estimate only errs on the safe side
 * and the refusal near the threshold is as exact as a measurement at each question.
 */
export function createDiskHeadroom(dir: string, threshold: number, options: DiskHeadroomOptions = {}): DiskHeadroom {
  const { spare = () => 0, everyMs = MEASURE_EVERY_MS, now = Date.now, statfs = statfsSync } = options;
  let measured: { at: number; free: number; real: number } | null = null;
  /** Bytes admitted and not yet written, and bytes admitted since the last measurement. */
  let pending = 0;
  let since = 0;
  const measure = (): { at: number; free: number; real: number } | null => {
    // What is still in flight was not written when the file system was asked: it stays counted.
    since = pending;
    try {
      const stats = statfs(dir);
      const real = stats.bavail * stats.bsize;
      measured = { at: now(), real, free: real + spare() };
      diskFree.set(measured.free);
      return measured;
    } catch {
      measured = null;
      return null; // not there (yet): the store reports that itself
    }
  };
  const check = () => {
    const used = () => since * BYTES_PER_BYTE;
    const fresh = measured !== null && now() - measured.at < everyMs && measured.free - used() >= 2 * threshold && measured.real - used() >= threshold;
    const bytes = fresh ? measured : measure();
    const low = bytes !== null && (bytes.free - used() < threshold || bytes.real - used() < threshold / 2);
    diskLow.set(low ? 1 : 0);
    return { free: bytes ? bytes.free - used() : null, low };
  };
  const admit = (bytes: number) => {
    pending += bytes;
    since += bytes;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      pending -= bytes;
    };
  };
  return { threshold, check, admit };
}

/** What /readyz says about it: why new mail is refused, when it is. */
export function diskDetail(disk: DiskHeadroom, consequence = 'refusing new mail (452 4.3.1)'): Record<string, string> {
  const { free, low } = disk.check();
  if (!low) return {};
  return { disk: `${consequence}: ${free} bytes free in DATA_DIR, below DISK_HEADROOM ${disk.threshold}; the queue still drains` };
}
