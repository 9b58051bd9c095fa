import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createDiskHeadroom, MEASURE_EVERY_MS } from '../shared/src/runtime/disk-headroom.ts';
import { metric } from './support/metrics.ts';
import { startPrimary } from './support/primary.ts';
import { oneProcessEnv, spawnService, waitReady, type Service } from './support/processes.ts';
import { openSession } from './support/smtp-session.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

/** Mount a tmpfs of `size` at `dir`; the reason it cannot, or null. */
function mountTmpfs(dir: string, size: string): string | null {
  if (process.getuid?.() !== 0) return 'needs root to mount a small tmpfs';
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'pipe' });
    return null;
  } catch (error) {
    return `cannot mount a tmpfs here: ${String((error as { stderr?: Buffer }).stderr ?? error).trim()}`;
  }
}

const LINE = `${'d'.repeat(76)}\r\n`;
/** About 100 KB: a 40 MiB file system is short of its headroom after a few hundred of them. */
const message = (index: number) => `Subject: fill ${index}\r\nMessage-ID: <fill-${index}@origin.test>\r\n\r\n${LINE.repeat(1300)}.\r\n`;

/** One message over a fresh connection; the reply that ended it (MAIL's when refused there). */
async function send(port: number, index: number): Promise<string> {
  const smtp = await openSession(port);
  try {
    await smtp.command('EHLO client.origin.test');
    const mail = await smtp.command('MAIL FROM:<a@origin.test>');
    if (!mail.startsWith('250')) return mail;
    await smtp.command('RCPT TO:<user@example.test>');
    await smtp.command('DATA');
    return await smtp.data(message(index));
  } finally {
    smtp.close();
  }
}

/**
 * `npm start` with DATA_DIR on a small file system, filled by mail while the primary is down, as in
 * issue 9: new mail gets 452 4.3.1 while free space is under DISK_HEADROOM, /readyz and a metric say
 * why, the queue still drains when the primary returns, and mail is taken again by itself after.
 */
describe('DISK_HEADROOM: a full disk does not wedge the queue', () => {
  const dir = tempDir();
  const data = join(dir.path, 'data');
  mkdirSync(data);
  const cannot = mountTmpfs(data, '40m');
  let system: Service;
  let primaryPort: number;
  let smtpPort: number;
  let httpPort: number;

  before(async () => {
    if (cannot) return;
    [primaryPort, smtpPort, httpPort] = [await freePort(), await freePort(), await freePort()];
    system = spawnService('all', 'all', oneProcessEnv({ primary: primaryPort, smtp: smtpPort, http: httpPort }, data, {
      SENDER_AUTH: 'false',
      MAX_MESSAGE_SIZE: '1048576',
      // Twice MAX_MESSAGE_SIZE would be 2 MiB here, less than SQLite's own journal needs (a WAL
      // checkpoint may grow the file by 4 MiB): with the default 25 MB message limit it is 50 MB.
      DISK_HEADROOM: '12582912',
      PROBE_SUCCESSES: '1',
    }), join(dir.path, 'logs'));
    await waitReady(system);
  });
  after(async () => {
    await system?.stop('SIGKILL');
    if (!cannot) execFileSync('umount', ['-l', data]);
    dir.remove();
  });

  it('refuses new mail with 452 4.3.1 below the headroom, drains the queue when the primary returns, then takes mail again', { skip: cannot ?? false }, async () => {
    const accepted: number[] = [];
    let refusal = '';
    for (let index = 0; index < 1000 && !refusal; index++) {
      const reply = await send(smtpPort, index);
      if (reply.startsWith('250 ')) accepted.push(index);
      else refusal = reply;
    }
    assert.equal(refusal, '452 4.3.1 Insufficient system storage', `after ${accepted.length} messages`);
    assert.ok(accepted.length > 50, `${accepted.length} messages taken before the disk was short`);

    const ready = await fetch(`http://127.0.0.1:${httpPort}/readyz`);
    const readiness = (await ready.json()) as { checks: Record<string, boolean>; detail?: Record<string, string> };
    assert.equal(ready.status, 503);
    assert.equal(readiness.checks.disk, false);
    assert.match(readiness.detail?.disk ?? '', /refusing new mail \(452 4\.3\.1\).*below DISK_HEADROOM 12582912/);
    assert.equal(await metric(httpPort, 'backupmx_disk_headroom_low'), 1);

    // The primary returns: every accepted message reaches it although the disk is nearly full.
    const primary = await startPrimary({ port: primaryPort });
    try {
      await waitFor(`all ${accepted.length} accepted messages at the primary`, () => {
        const subjects = new Set(primary.messages.map((received) => /Subject: fill (\d+)/.exec(received.raw.toString('latin1'))?.[1]));
        return accepted.every((index) => subjects.has(String(index)));
      }, 120_000);
      // Delivered mail leaves room behind it (SQLite reuses the pages): mail is taken again, unaided.
      await waitFor('readiness back', async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status === 200, 30_000);
      assert.match(await send(smtpPort, 1000), /^250 2\.0\.0 Ok: queued as /);
      assert.equal(await metric(httpPort, 'backupmx_disk_headroom_low'), 0);
      await waitFor('the new message delivered too', () => primary.messages.some((received) => received.raw.toString('latin1').includes('Subject: fill 1000')), 30_000);
    } finally {
      await primary.close();
    }
  });
});

/** createDiskHeadroom on a file system whose free space the test sets (in MiB). */
function fakeDisk(thresholdMiB: number) {
  const MiB = 1024 * 1024;
  const disk = { freeMiB: 0, asked: 0, at: 0 };
  const headroom = createDiskHeadroom('/nowhere', thresholdMiB * MiB, {
    now: () => disk.at,
    statfs: () => (disk.asked++, { bavail: disk.freeMiB * 256, bsize: 4096 }),
  });
  const freeMiB = () => (headroom.check().free ?? NaN) / MiB;
  return { disk, headroom, freeMiB, MiB };
}

describe('DISK_HEADROOM between two measurements', () => {
  it('reuses a measurement for MEASURE_EVERY_MS while far above the threshold', () => {
    const { disk, headroom } = fakeDisk(10);
    disk.freeMiB = 1000;
    for (let i = 0; i < 5; i++) assert.equal(headroom.check().low, false);
    assert.equal(disk.asked, 1);
    disk.at += MEASURE_EVERY_MS;
    headroom.check();
    assert.equal(disk.asked, 2);
  });

  it('counts admitted mail (three times its size) as used until a measurement after its write, and measures at every question near the threshold', () => {
    const { disk, headroom, freeMiB, MiB } = fakeDisk(10);
    disk.freeMiB = 100;
    assert.equal(freeMiB(), 100);
    const first = headroom.admit(20 * MiB);
    assert.equal(freeMiB(), 40, 'the estimate, without asking the file system again');
    assert.equal(disk.asked, 1);
    // A burst: the estimate comes within twice the threshold, so the file system is asked, and
    // what is still being written counts on top of its answer.
    const second = headroom.admit(11 * MiB);
    assert.deepEqual(headroom.check(), { free: 7 * MiB, low: true });
    assert.equal(disk.asked, 2);
    // Written: the file system shows it, and nothing is counted twice.
    first();
    second();
    disk.freeMiB = 69;
    assert.deepEqual(headroom.check(), { free: 69 * MiB, low: false });
    disk.freeMiB = 15;
    disk.at += MEASURE_EVERY_MS;
    const asked = disk.asked;
    for (let i = 0; i < 3; i++) assert.equal(freeMiB(), 15);
    assert.equal(disk.asked, asked + 3, 'within twice the threshold every question is a measurement');
  });
});
