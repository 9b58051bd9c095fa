import type { Logger } from './logger.ts';
import type { Store } from './store.ts';

/** The MongoDB adapter arrives with the compose issue; until then MONGODB_URL is refused clearly. */
export async function openMongoStore(_url: string, _log: Logger): Promise<Store> {
  throw new Error('MONGODB_URL: the MongoDB store is not part of this build yet; unset it to use SQLite under DATA_DIR');
}
