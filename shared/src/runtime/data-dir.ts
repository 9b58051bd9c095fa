/**
 * DATA_DIR at start-up (issue 13): a directory this process can create files in, checked before
 * SQLite tries (whose own word for every such problem is "unable to open database file").
 */
import { accessSync, constants, mkdirSync, statSync } from 'node:fs';
import { ConfigError } from './config.ts';

function reason(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  if (code === 'EROFS') return 'read-only file system';
  if (code === 'ENOSPC') return 'no space left on the device';
  if (code === 'ENOTDIR' || code === 'EEXIST') return 'a file is in the way';
  return (error as Error).message;
}

/** Who this process is, for the error: the container user is what an administrator has to fix. */
function user(): string {
  return typeof process.getuid === 'function' ? `uid ${process.getuid()}` : 'this user';
}

/**
 * Make sure `dir` exists (creating it) and is a directory this process may write; `file`, when it
 * exists, must be readable and writable too. Throws ConfigError naming DATA_DIR.
 */
export function checkDataDir(dir: string, file?: string): void {
  let stat;
  try {
    stat = statSync(dir, { throwIfNoEntry: false });
  } catch (error) {
    throw new ConfigError(`DATA_DIR: cannot reach ${dir}: ${reason(error)} (running as ${user()})`);
  }
  if (!stat) {
    try {
      mkdirSync(dir, { recursive: true });
    } catch (error) {
      throw new ConfigError(`DATA_DIR: cannot create ${dir}: ${reason(error)} (running as ${user()})`);
    }
    stat = statSync(dir);
  }
  if (!stat.isDirectory()) throw new ConfigError(`DATA_DIR: ${dir} is not a directory`);
  try {
    accessSync(dir, constants.R_OK | constants.W_OK | constants.X_OK);
  } catch (error) {
    const owner = `it belongs to uid ${stat.uid}, mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}`;
    throw new ConfigError(`DATA_DIR: ${dir} is not writable: ${reason(error)} (running as ${user()}; ${owner})`);
  }
  if (file === undefined) return;
  try {
    accessSync(file, constants.R_OK | constants.W_OK);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
    const owner = statSync(file, { throwIfNoEntry: false });
    const detail = owner ? `; it belongs to uid ${owner.uid}, mode ${(owner.mode & 0o777).toString(8).padStart(4, '0')}` : '';
    throw new ConfigError(`DATA_DIR: ${file} is not writable: ${reason(error)} (running as ${user()}${detail})`);
  }
}
