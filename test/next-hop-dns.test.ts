/**
 * The primary's address is looked up for every attempt (issue 13, defect 1): a deliverer whose
 * PRIMARY is a name that resolves to one loopback address and then to another sends the next
 * message to the new address, names host and address in the attempt record, and defers (4.4.3)
 * when the lookup fails, instead of going on with the old address (nodemailer's own DNS cache did
 * both: five minutes of the old address, five more after a failed lookup).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import nodemailer from 'nodemailer';
import type { HostLookup } from '../services/deliverer/src/next-hop.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { dnsError } from './support/fake-resolver.ts';
import { startPrimary } from './support/primary.ts';
import { freePort, waitFor } from './support/util.ts';

describe('deliverer: the next hop is resolved at every attempt, never from a stale cache', () => {
  let port = 0;
  let first: Awaited<ReturnType<typeof startPrimary>>;
  let second: Awaited<ReturnType<typeof startPrimary>>;
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  /** What the system resolver says of primary.test right now. */
  let answer: string[] | Error = ['127.0.0.2'];
  const asked: string[] = [];
  const lookup: HostLookup = async (host) => {
    asked.push(host);
    if (host !== 'primary.test') throw dnsError('ENOTFOUND');
    if (answer instanceof Error) throw answer;
    return answer.map((address) => ({ address, family: 4 }));
  };

  before(async () => {
    port = await freePort();
    // Two primaries on the same port, at two loopback addresses: the name moves from one to the other.
    first = await startPrimary({ host: '127.0.0.2', port });
    second = await startPrimary({ host: '127.0.0.3', port });
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', PRIMARY: `primary.test:${port}`, SENDER_AUTH: 'false', RETRY_SCHEDULE: '1h' }, { deliver: { lookup } });
  });
  after(async () => {
    await system.close();
    await first.close();
    await second.close();
  });

  async function send(subject: string): Promise<string> {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: system.port, secure: false, ignoreTLS: true });
    try {
      const info = await transport.sendMail({ envelope: { from: 'sender@origin.test', to: ['user@example.test'] }, raw: `Subject: ${subject}\r\n\r\nbody\r\n` });
      const id = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1];
      assert.ok(id, info.response);
      return id;
    } finally {
      transport.close();
    }
  }
  const subjects = (primary: typeof first) => primary.messages.map((m) => /Subject: (.*)\r\n/.exec(m.raw.toString())?.[1]);
  const attempts = async (id: string) => (await system.store.getMessage(id))?.attempts.map((a) => `${a.result} ${a.nextHop} ${a.reply.slice(0, 5)}`);

  it('delivers to the address the name has now, and records host and address', async () => {
    const id = await send('one');
    await waitFor('message one at 127.0.0.2', () => subjects(first).includes('one'));
    assert.deepEqual(await waitFor('the attempt record', () => attempts(id).then((a) => a?.length && a)), [`delivered primary.test[127.0.0.2]:${port} 250 2`]);
    assert.deepEqual(subjects(second), []);
  });

  it('after the name moves, the next message goes to the new address at once', async () => {
    answer = ['127.0.0.3'];
    const id = await send('two');
    await waitFor('message two at 127.0.0.3', () => subjects(second).includes('two'));
    assert.deepEqual(subjects(first), ['one'], 'nothing more went to the old address');
    assert.deepEqual(await waitFor('the attempt record', () => attempts(id).then((a) => a?.length && a)), [`delivered primary.test[127.0.0.3]:${port} 250 2`]);
  });

  it('a lookup that fails defers the mail with 4.4.3 instead of using an old address, and it goes out once the name resolves again', async () => {
    answer = dnsError('ENOTFOUND');
    const id = await send('three');
    const detail = await waitFor('message three deferred', async () => {
      const found = await system.store.getMessage(id);
      return found?.deliveries[0]?.attempts === 1 ? found : null;
    });
    assert.equal(detail.deliveries[0]?.state, 'queued');
    assert.equal(detail.deliveries[0]?.lastReply, '4.4.3 Name service error for the next hop (primary.test: ENOTFOUND); will try again');
    assert.equal(detail.attempts[0]?.nextHop, null, 'no host was tried');
    await new Promise((resolve) => setTimeout(resolve, 2500)); // a deliverer tick: still nothing
    assert.deepEqual([...subjects(first), ...subjects(second)], ['one', 'two']);

    answer = ['127.0.0.3'];
    assert.equal(await system.store.retryNow(id, Date.now()), 1);
    await waitFor('message three at 127.0.0.3', () => subjects(second).includes('three'), 10_000);
    assert.ok(asked.length >= 4 && asked.every((host) => host === 'primary.test'), `one lookup per attempt: ${asked.join(', ')}`);
  });
});
