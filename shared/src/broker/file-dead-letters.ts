import { readdir, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { DeadLetter, DeadLetters } from './broker.ts';
import type { Envelope, ReceivedMail } from '../types.ts';

const SAFE_ID = /^[A-Za-z0-9._:-]{1,100}$/;

/**
 * The single-process mode's dead-letter queue: DATA_DIR/dead/<id>.eml (the message) and <id>.json
 * (its envelope), written by the in-process broker. Replaying moves both aside, hands the message
 * to `publish` (the spool), and only then deletes them; if publishing fails they are put back.
 */
export function createFileDeadLetters(dir: string, publish: (mail: ReceivedMail) => Promise<void>): DeadLetters {
  async function ids(): Promise<Array<{ id: string; at: number }>> {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const found = await Promise.all(
      names
        .filter((name) => name.endsWith('.eml'))
        .map(async (name) => ({ id: name.slice(0, -4), at: (await stat(join(dir, name)).catch(() => null))?.mtimeMs ?? 0 })),
    );
    return found.sort((a, b) => a.at - b.at);
  }

  async function envelopeOf(file: string): Promise<{ envelope: Envelope | null; receivedAt: number | null }> {
    try {
      const meta = JSON.parse(await readFile(file, 'utf8')) as { envelope?: Envelope; receivedAt?: number };
      return { envelope: meta.envelope ?? null, receivedAt: typeof meta.receivedAt === 'number' ? meta.receivedAt : null };
    } catch {
      return { envelope: null, receivedAt: null };
    }
  }

  return {
    async list(limit) {
      const all = await ids();
      const items: DeadLetter[] = [];
      for (const { id, at } of all.slice(0, limit)) {
        const size = (await stat(join(dir, `${id}.eml`)).catch(() => null))?.size;
        if (size === undefined) continue;
        const { envelope, receivedAt } = await envelopeOf(join(dir, `${id}.json`));
        items.push({ id, envelope: envelope && { mailFrom: envelope.mailFrom, rcptTo: envelope.rcptTo }, size, receivedAt, deadAt: Math.round(at), reason: 'rejected' });
      }
      return { total: all.length, items };
    },

    async replay(id) {
      if (!SAFE_ID.test(id)) return false;
      const eml = join(dir, `${id}.eml`);
      const json = join(dir, `${id}.json`);
      try {
        await rename(eml, `${eml}.replay`);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
        throw error;
      }
      await rename(json, `${json}.replay`).catch(() => {});
      try {
        const body = await readFile(`${eml}.replay`);
        const { envelope, receivedAt } = await envelopeOf(`${json}.replay`);
        if (!envelope) throw new Error(`dead letter ${id} has no readable envelope (${id}.json)`);
        await publish({ id, envelope, body, receivedAt: receivedAt ?? Date.now() });
      } catch (error) {
        await rename(`${eml}.replay`, eml).catch(() => {});
        await rename(`${json}.replay`, json).catch(() => {});
        throw error;
      }
      await unlink(`${eml}.replay`).catch(() => {});
      await unlink(`${json}.replay`).catch(() => {});
      return true;
    },
  };
}
