import { Buffer } from 'node:buffer';
import { readFileSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { tlsPairProblem } from '@backupmx/shared/runtime/tls-pair.ts';

/** TLS 1.2 or newer (RFC 8996 deprecates 1.0 and 1.1). */
export const MIN_TLS_VERSION = 'TLSv1.2';

export interface TlsFiles {
  key: Buffer;
  cert: Buffer;
}

/** Read and check a certificate and its key (they must parse and belong together). Throws otherwise. */
export function readTlsFiles(certPath: string, keyPath: string): TlsFiles {
  const files = { cert: readFileSync(certPath), key: readFileSync(keyPath) };
  const problem = tlsPairProblem(files.cert, files.key);
  if (problem) throw new Error(`${problem.key}: ${problem.key === 'TLS_CERT' ? certPath : keyPath} ${problem.message}`);
  createSecureContext({ ...files, minVersion: MIN_TLS_VERSION }); // what the TLS library itself refuses
  return files;
}

/**
 * Watch the certificate and key (by polling their status, which also sees a file replaced by a
 * rename, as certbot and Kubernetes secrets do it) and call `apply` with the new pair once both
 * read and match. Sessions already in TLS keep the context they started with.
 */
export function watchTlsFiles(certPath: string, keyPath: string, log: Logger, apply: (files: TlsFiles) => void, intervalMs = 1000): { stop(): void } {
  const reload = (current: Stats, previous: Stats) => {
    if (current.mtimeMs === previous.mtimeMs && current.ino === previous.ino && current.size === previous.size) return;
    try {
      apply(readTlsFiles(certPath, keyPath));
      log.info({ cert: certPath, key: keyPath }, 'TLS certificate reloaded');
    } catch (error) {
      // Often the certificate changed and the key has not yet: the next change retries.
      log.warn({ cert: certPath, key: keyPath, err: error }, 'TLS certificate not reloaded; keeping the current one');
    }
  };
  const options = { interval: intervalMs, persistent: false };
  watchFile(certPath, options, reload);
  watchFile(keyPath, options, reload);
  return {
    stop() {
      unwatchFile(certPath, reload);
      unwatchFile(keyPath, reload);
    },
  };
}
