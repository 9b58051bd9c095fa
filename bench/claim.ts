/**
 * `node bench/claim.ts [--messages 5000,50000] [--max-claims 250] [--in-hand 160]`: what one claim() costs over a backlog of the SQLite
 * store (issue 9: the claim query sorted the whole backlog at each claim). For each backlog size,
 * three cases, each printing ms per claim:
 *   flush      the deliverer's flush after the primary returns (ignoreSchedule + notAttemptedSince),
 *              as its pipeline does it: --in-hand (160) in hand, half settled then as many more
 *              claimed, until empty (or --max-claims);
 *   scheduled  the same drain with ordinary claims (everything is due);
 *   deferred   the whole backlog deferred to later and 20 new messages due: ordinary claims that
 *              find the 20 (what each new message's claim costs while the primary defers).
 * "ms per claim" is the wall time of claim() as the deliverer waits for it (its commit included);
 * "cpu" is the process's CPU time per claim (the query, mostly: the fsync waits are not CPU).
 * Prints numbers; it is not a test.
 */
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openSqliteStore } from '../shared/src/store/sqlite-store.ts';
import type { Store } from '../shared/src/store/store.ts';
import type { ClaimedMessage } from '../shared/src/types.ts';
import { tempDir } from '../test/support/util.ts';

const { values: args } = parseArgs({
  options: { messages: { type: 'string', default: '5000,50000' }, 'max-claims': { type: 'string', default: '250' }, 'in-hand': { type: 'string', default: '160' } },
});
const sizes = args.messages.split(',').map(Number);
/** A drain stops after this many claims (the 50,000 backlog would take thousands): enough to know what one costs. */
const MAX_CLAIMS = Number(args['max-claims']);
const ROUTE = 'primary';
/** What the deliverer keeps in hand: 8 x DELIVERY_CONCURRENCY (default 20). */
const IN_HAND = Number(args['in-hand']);
const MIN = 60_000;
const T0 = Date.now() - 60 * MIN;
const body = Buffer.alloc(4096, 'x');

async function fill(store: Store, count: number, first: number, receivedAt: (i: number) => number): Promise<void> {
  for (let start = 0; start < count; start += 500) {
    const puts = [];
    for (let i = start; i < Math.min(count, start + 500); i++) {
      const n = first + i;
      const mail = { id: `m${String(n).padStart(7, '0')}`, envelope: { mailFrom: 's@x.test', rcptTo: [`r${n}@y.test`] }, body, receivedAt: receivedAt(n) };
      puts.push(store.put(mail, { [`r${n}@y.test`]: ROUTE }));
    }
    await Promise.all(puts);
  }
}

async function settleAll(store: Store, claims: ClaimedMessage[], owner: string, now: number, deferTo?: number): Promise<void> {
  await Promise.all(claims.map((c) => store.settle(c.message.id, owner, c.deliveries.map((d) =>
    deferTo === undefined
      ? { recipient: d.recipient, result: 'delivered' as const, reply: '250 ok' }
      : { recipient: d.recipient, result: 'deferred' as const, reply: '451 later', nextAttemptAt: deferTo }), now)));
}

/** The deliverer's pipeline against the store alone: returns [claims, ms per claim, cpu ms per claim, messages]. */
async function drain(store: Store, flush: boolean, now: number): Promise<[number, number, number, number]> {
  const started = now;
  let inHand: { claims: ClaimedMessage[]; owner: string }[] = [];
  let held = 0;
  let calls = 0;
  let spent = 0;
  let cpu = 0;
  let messages = 0;
  for (;;) {
    const limit = IN_HAND - held;
    const owner = `bench#${(calls += 1)}`;
    const t = performance.now();
    const c = process.cpuUsage();
    const claims = await store.claim({ route: ROUTE, now, leaseMs: 5 * MIN, owner, limit, ...(flush ? { ignoreSchedule: true, notAttemptedSince: started } : {}) });
    spent += performance.now() - t;
    cpu += cpuMs(c);
    messages += claims.length;
    inHand.push({ claims, owner });
    held += claims.length;
    if (claims.length < limit || calls >= MAX_CLAIMS) break;
    // Half of what is in hand finishes, then the next claim.
    let toSettle = IN_HAND / 2;
    while (toSettle > 0 && inHand.length > 0) {
      const batch = inHand[0] as { claims: ClaimedMessage[]; owner: string };
      const done = batch.claims.splice(0, toSettle);
      await settleAll(store, done, batch.owner, now);
      toSettle -= done.length;
      held -= done.length;
      if (batch.claims.length === 0) inHand.shift();
    }
  }
  for (const batch of inHand) await settleAll(store, batch.claims, batch.owner, now);
  inHand = [];
  return [calls, spent / calls, cpu / calls, messages];
}

function cpuMs(since: NodeJS.CpuUsage): number {
  const { user, system } = process.cpuUsage(since);
  return (user + system) / 1000;
}

for (const size of sizes) {
  for (const kind of ['flush', 'scheduled', 'deferred'] as const) {
    const dir = tempDir('bench-claim-');
    const store = await openSqliteStore(join(dir.path, 'store.sqlite'));
    await fill(store, size, 0, (n) => T0 + n);
    const now = T0 + 30 * MIN;
    if (kind === 'deferred') {
      // Every message attempted once and deferred to the far future; then 20 new ones arrive.
      for (;;) {
        const owner = 'defer';
        const claims = await store.claim({ route: ROUTE, now, leaseMs: MIN, owner, limit: 500 });
        if (claims.length === 0) break;
        await settleAll(store, claims, owner, now, now + 600 * MIN);
      }
      await fill(store, 20, size, () => now);
      const runs = 20;
      let spent = 0;
      let cpu = 0;
      let found = 0;
      for (let i = 0; i < runs; i++) {
        const owner = `bench#${i}`;
        const t = performance.now();
        const c = process.cpuUsage();
        const claims = await store.claim({ route: ROUTE, now: now + 1, leaseMs: MIN, owner, limit: IN_HAND });
        spent += performance.now() - t;
        cpu += cpuMs(c);
        found += claims.length;
        // Give them back: the next run finds the same 20.
        await settleAll(store, claims, owner, now + 1, now);
      }
      console.log(`${size} backlog, ${kind}: ${(spent / runs).toFixed(2)} ms per claim, cpu ${(cpu / runs).toFixed(2)} ms (${runs} claims, ${found / runs} messages each)`);
    } else {
      const [calls, ms, cpu, messages] = await drain(store, kind === 'flush', now);
      console.log(`${size} backlog, ${kind}: ${ms.toFixed(2)} ms per claim, cpu ${cpu.toFixed(2)} ms (${calls} claims, ${messages} messages)`);
    }
    await store.close();
    dir.remove();
  }
}
