import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession } from './support/smtp-session.ts';
import { waitFor } from './support/util.ts';

/**
 * Randomised sessions against ingress: thousands of command sequences built from valid, broken and
 * hostile pieces. Reproducible: FUZZ_SEED picks the sequence (the seed is printed), FUZZ_SESSIONS
 * how many. Asserts no crash, no unhandled rejection or exception, no session left open on the
 * server (nor counted against the connection limits), and that every message that got a 250 is in
 * the spool.
 */
const SEED = Number(process.env.FUZZ_SEED ?? 20_261_128);
const SESSIONS = Number(process.env.FUZZ_SESSIONS ?? 3000);
const CONCURRENCY = 16;
/** How long to wait for a reply that may never come (a step the server does not answer). */
const QUIET_MS = 250;

/** mulberry32: a small seeded PRNG. */
function prng(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (max: number) => Math.floor(next() * max),
    pick<T>(items: readonly T[]): T {
      return items[Math.floor(next() * items.length)] as T;
    },
    chance: (p: number) => next() < p,
  };
}
type Random = ReturnType<typeof prng>;

const ADDRESSES = [
  'user@example.test', 'User.Name+tag@EXAMPLE.test', 'postmaster@example.test', 'a@origin.test', '', 'postmaster',
  'user%elsewhere.test@example.test', 'elsewhere.test!user@example.test', '@relay.test:user@example.test', '@example.test:user@elsewhere.test',
  '"quoted@elsewhere.test"@example.test', 'user@[127.0.0.1]', 'user@[IPv6:::1]', 'user@elsewhere.test', 'user@example.test.',
  'jörg@example.test', 'user@bücher.test', 'user@@example.test', '.user@example.test', 'user..x@example.test', 'a\u0000b@example.test',
  `${'l'.repeat(70)}@example.test`, `user@${'d'.repeat(250)}.test`, 'user@xn--bcher-kva.test', '<nested@example.test>', 'user@example.test>',
];
const PARAMS = ['', ' SIZE=100', ' SIZE=999999999', ' BODY=8BITMIME', ' SMTPUTF8', ' BODY=BINARYMIME', ' SIZE', ' RET=FULL', ' FOO=bar', ' SIZE=1 SIZE=2', ' NOTIFY=NEVER'];

function garbage(random: Random, length: number): Buffer {
  return Buffer.from(Array.from({ length }, () => random.int(256)));
}

/** One command line (without its line ending), valid or not. */
function command(random: Random): Buffer {
  const address = () => random.pick(ADDRESSES);
  switch (random.int(16)) {
    case 0:
      return Buffer.from(random.pick(['EHLO client.origin.test', 'HELO client.origin.test', 'EHLO', 'ehlo [127.0.0.1]', 'EHLO a b c', 'HELO (evil']));
    case 1:
    case 2:
      return Buffer.from(`MAIL FROM:<${address()}>${random.pick(PARAMS)}`);
    case 3:
    case 4:
    case 5:
      return Buffer.from(`RCPT TO:<${address()}>${random.pick(PARAMS)}`);
    case 6:
      return Buffer.from(random.pick(['RSET', 'NOOP', 'HELP', 'VRFY user@example.test', 'EXPN list', 'VRFY', 'ETRN example.test', 'TURN']));
    case 7:
      return Buffer.from(random.pick(['STARTTLS', 'AUTH PLAIN AGFhAGI=', 'BDAT 10 LAST', 'XCLIENT ADDR=1.2.3.4', 'XFORWARD NAME=x', 'WIZ pass', 'SHELL', 'KILL']));
    case 8:
      return Buffer.from(garbage(random, random.int(40)).filter((byte) => byte !== 10 && byte !== 13));
    case 9:
      return Buffer.from(`NOOP ${'x'.repeat(900 + random.int(3000))}`);
    case 10:
      return Buffer.from(random.pick(['MAIL FROM:', 'RCPT TO:', 'MAIL FROM: <a@origin.test>', 'RCPT TO: <user@example.test>', 'MAIL TO:<a@b>', 'RCPT FROM:<a@b>', 'DATA x', 'QUIT now']));
    case 11:
      return Buffer.from(`${random.pick(['noop', 'rset', 'Rcpt To:<user@example.test>', 'mail from:<>'])}`);
    default:
      return Buffer.from(random.pick(['NOOP', 'RSET', 'MAIL FROM:<a@origin.test>', 'RCPT TO:<user@example.test>', 'RCPT TO:<other@example.test>']));
  }
}

/** A message body (without the final terminator), sometimes malformed. */
function body(random: Random): Buffer {
  const lines: Buffer[] = [Buffer.from(random.pick(['Subject: fuzz', 'From: a@origin.test', 'Received: from x by y; now', 'not a header', '', 'X: y']))];
  for (let index = random.int(12); index > 0; index--) {
    lines.push(
      random.pick([
        Buffer.from('line of text'),
        Buffer.from(''),
        Buffer.from('..dot-stuffed line'),
        Buffer.from('.'),
        Buffer.from('x'.repeat(random.int(5000))),
        garbage(random, random.int(60)),
        Buffer.from('bare\nLF\n.\nstill data'),
        Buffer.from('nul \0 byte'),
        Buffer.from('Received: from a by b; Sat, 28 Nov 2026 09:00:00 +0000'),
      ]),
    );
  }
  return Buffer.concat(lines.flatMap((line) => [line, Buffer.from(random.chance(0.9) ? '\r\n' : '\n')]));
}

interface Outcome {
  queued: string[];
}

/** One random session. Resolves with the queue ids the server announced with 250. */
function runSession(port: number, random: Random): Promise<Outcome> {
  return new Promise((resolve) => {
    const socket: Socket = connect(port, '127.0.0.1');
    const queued: string[] = [];
    let buffer = '';
    let replies = 0;
    let closed = false;
    let wake: (() => void) | null = null;
    socket.setEncoding('latin1');
    socket.on('data', (data: string) => {
      buffer += data;
      let end: number;
      while ((end = buffer.indexOf('\n')) !== -1) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        const id = /^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)$/.exec(line)?.[1];
        if (id) queued.push(id);
        if (/^\d{3}(?: |$)/.test(line)) {
          replies += 1;
          wake?.();
        }
      }
    });
    const finish = () => {
      if (closed) return;
      closed = true;
      wake?.();
    };
    socket.on('close', finish);
    socket.on('error', finish);
    /** Wait for the count of replies to reach `count`, the socket to close, or QUIET_MS of silence. */
    const until = (count: number) =>
      new Promise<void>((done) => {
        const check = () => {
          if (replies >= count || closed) {
            clearTimeout(timer);
            wake = null;
            done();
          }
        };
        const timer = setTimeout(() => {
          wake = null;
          done();
        }, QUIET_MS);
        wake = check;
        check();
      });

    const script = async () => {
      await until(1); // greeting
      // Most sessions start like a real client, so that the random part reaches every state.
      const start = ['EHLO client.origin.test', 'MAIL FROM:<a@origin.test>', 'RCPT TO:<user@example.test>'].slice(0, random.pick([0, 1, 2, 3, 3, 3]));
      for (const line of start) {
        const expected = replies + 1;
        socket.write(`${line}\r\n`);
        await until(expected);
      }
      const steps = 1 + random.int(12);
      for (let step = 0; step < steps && !closed; step++) {
        const kind = random.int(10);
        if (kind <= 1) {
          // DATA with a message
          const expected = replies + 1;
          socket.write('DATA\r\n');
          await until(expected);
          if (closed) break;
          const cut = random.chance(0.1);
          socket.write(Buffer.concat([body(random), Buffer.from(cut ? '' : '\r\n.\r\n')]));
          if (cut) {
            // Disconnect mid-DATA.
            socket.destroy();
            break;
          }
          await until(expected + 1);
        } else if (kind === 2) {
          // Several commands in one write (pipelining, also where it is not allowed).
          const lines = Array.from({ length: 2 + random.int(5) }, () => command(random));
          const expected = replies + lines.length;
          socket.write(Buffer.concat(lines.flatMap((line) => [line, Buffer.from('\r\n')])));
          await until(expected);
        } else {
          const expected = replies + 1;
          socket.write(Buffer.concat([command(random), Buffer.from(random.chance(0.9) ? '\r\n' : '\n')]));
          await until(expected);
        }
      }
      if (closed) return;
      switch (random.int(4)) {
        case 0:
          socket.write(garbage(random, random.int(30))); // a partial line, then gone
          socket.destroy();
          break;
        case 1:
          socket.destroy();
          break;
        default: {
          socket.write('QUIT\r\n');
          await until(replies + 1);
          socket.destroy();
        }
      }
    };
    script().then(
      () => {
        socket.destroy();
        resolve({ queued });
      },
      () => {
        socket.destroy();
        resolve({ queued });
      },
    );
  });
}

describe('ingress: randomised hostile sessions', () => {
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  const problems: unknown[] = [];
  const onProblem = (error: unknown) => problems.push(error);
  before(async () => {
    process.on('unhandledRejection', onProblem);
    process.on('uncaughtException', onProblem);
    const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
    system = await startIngressWithSpool(
      { RELAY_DOMAINS: 'example.test,xn--bcher-kva.test', GREETING_DELAY: '0', MAX_MESSAGE_SIZE: '20000', MAX_CONNECTIONS_PER_IP: '1000', MAX_COMMAND_LENGTH: '1000', LOG_LEVEL: 'silent' },
      { ingress: { resolver } },
    );
  });
  after(async () => {
    process.off('unhandledRejection', onProblem);
    process.off('uncaughtException', onProblem);
    await system.close();
  });

  it(`survives ${SESSIONS} random sessions (seed ${SEED}) and stores every message it acknowledged`, async () => {
    const random = prng(SEED);
    // Each session draws from its own generator, seeded from the main one, so a run is the same
    // whatever order the concurrent sessions happen to interleave in.
    const seeds = Array.from({ length: SESSIONS }, () => random.int(2 ** 31));
    const queued: string[] = [];
    let nextSession = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (nextSession < seeds.length) {
          const seed = seeds[nextSession++] ?? 0;
          queued.push(...(await runSession(system.port, prng(seed))).queued);
        }
      }),
    );
    // smtp-server forgets a session it closed (QUIT, 421) at once; our count follows when the
    // socket is gone.
    await waitFor('every session to end on the server', () => system.ingress.connections() === 0 && system.ingress.counted().connections === 0, 10_000);
    assert.deepEqual(system.ingress.counted(), { connections: 0, clients: 0 }, 'connection accounting leaked');
    assert.deepEqual(problems, [], 'unhandled rejection or exception');
    assert.ok(queued.length > 0, 'some messages should have been accepted');
    for (const id of queued) assert.ok(await system.store.getMessage(id), `message ${id} got 250 but is not in the spool`);
    // Still serving.
    const smtp = await openSession(system.port);
    assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
    assert.match(await smtp.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
    assert.match(await smtp.command('DATA'), /^354 /);
    assert.match(await smtp.data('Subject: after the storm\r\n\r\nhi\r\n.\r\n'), /^250 2\.0\.0 /);
    smtp.close();
    console.log(`fuzz: seed ${SEED}, ${SESSIONS} sessions, ${queued.length} messages acknowledged and found in the spool`);
  });
});
