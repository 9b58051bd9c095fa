import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { authenticate, dkimSign } from 'mailauth';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession } from './support/smtp-session.ts';

/**
 * Sender authentication (SPF, DKIM, DMARC with mailauth) and DNS blocklists, against a fake DNS:
 * a zone in a map, every other name "not found". No internet needed.
 */
const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ZONE: Record<string, Record<string, unknown[]>> = {
  'origin.test': { TXT: [['v=spf1 ip4:127.0.0.1 -all']] },
  'sel._domainkey.origin.test': { TXT: [[`v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`]] },
  '_dmarc.origin.test': { TXT: [['v=DMARC1; p=reject']] },
  'bank.test': { TXT: [['v=spf1 ip4:192.0.2.1 -all']] },
  '_dmarc.bank.test': { TXT: [['v=DMARC1; p=reject']] },
  'lax.test': { TXT: [['v=spf1 ip4:192.0.2.1 -all']] },
  '_dmarc.lax.test': { TXT: [['v=DMARC1; p=none']] },
  'sel._domainkey.forwarder.test': { TXT: [[`v=DKIM1; k=rsa; p=${publicKey.export({ type: 'spki', format: 'der' }).toString('base64')}`]] },
  '1.0.0.127.bl.test': { A: ['127.0.0.2'] },
  '1.0.0.127.refusing.test': { A: ['127.255.255.254'] },
};
const lookups: string[] = [];
const fakeDns = async (name: string, rrtype: string): Promise<unknown[]> => {
  lookups.push(`${rrtype} ${name}`);
  const records = ZONE[name.toLowerCase()]?.[rrtype];
  if (records) return records;
  throw Object.assign(new Error(`queryTxt ENOTFOUND ${name}`), { code: ZONE[name.toLowerCase()] ? 'ENODATA' : 'ENOTFOUND' });
};
/** A DNS that never answers. */
const deadDns = () => new Promise<unknown[]>(() => {});

async function signed(from: string, domain: string): Promise<string> {
  const message = `From: Sender <${from}>\r\nTo: user@example.test\r\nSubject: signed\r\nMessage-ID: <1@${domain}>\r\nDate: Sat, 28 Nov 2026 09:00:00 +0000\r\n\r\nHello.\r\n`;
  const { signatures } = await dkimSign(message, { signatureData: [{ signingDomain: domain, selector: 'sel', privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }) }] } as never);
  assert.ok(signatures, 'the test message could not be signed');
  return signatures + message;
}
/** A message as a mailing list at forwarder.test passes it on: with its ARC set (i=1) on top. */
async function arcSealed(message: string): Promise<string> {
  const privatePem = privateKey.export({ type: 'pkcs8', format: 'pem' });
  const result = await authenticate(message, { ip: '192.0.2.9', helo: 'list.forwarder.test', sender: 'list@forwarder.test', mta: 'forwarder.test', resolver: fakeDns, seal: { signingDomain: 'forwarder.test', selector: 'sel', privateKey: privatePem } } as never);
  const arcSet = result.headers.split(/\r?\n(?![ \t])/).filter((field) => /^ARC-/i.test(field));
  assert.equal(arcSet.length, 3, 'the test message could not be ARC-sealed');
  return `${arcSet.join('\r\n')}\r\n${message}`;
}
const unsigned = (from: string) => `From: <${from}>\r\nTo: user@example.test\r\nSubject: forged\r\nMessage-ID: <2@x.test>\r\n\r\nPay now.\r\n`;

type System = Awaited<ReturnType<typeof startIngressWithSpool>>;

/** Send one message; returns the reply to the end of data and, when queued, the stored bytes. */
async function send(system: System, mailFrom: string, message: string): Promise<{ reply: string; stored: string | null }> {
  const smtp = await openSession(system.port);
  assert.match(await smtp.command('EHLO mail.origin.test'), /^250 /);
  assert.match(await smtp.command(`MAIL FROM:<${mailFrom}>`), /^250 /);
  assert.match(await smtp.command('RCPT TO:<user@example.test>'), /^250 /);
  assert.match(await smtp.command('DATA'), /^354 /);
  const reply = await smtp.data(`${message}.\r\n`);
  smtp.close();
  const id = /queued as ([0-9A-Z]+)/.exec(reply)?.[1];
  if (!id) return { reply, stored: null };
  const chunks: Buffer[] = [];
  for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
  return { reply, stored: Buffer.concat(chunks).toString('latin1') };
}

/** Our Authentication-Results header, unfolded: right below our Received header. */
function authResults(stored: string): string {
  const match = /^Received: (?:[^\r\n]*\r\n[ \t])*[^\r\n]*\r\n(Authentication-Results: (?:[^\r\n]*\r\n[ \t])*[^\r\n]*)\r\n/.exec(stored);
  assert.ok(match, `no Authentication-Results below our Received header:\n${stored.slice(0, 600)}`);
  return (match[1] ?? '').replace(/\r\n[ \t]+/g, ' ');
}

describe('ingress: sender authentication (report only, the default)', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0' }, { ingress: { resolver: fakeDns } });
  });
  after(() => system.close());

  it('prepends Authentication-Results naming SMTP_HOSTNAME with SPF, DKIM and DMARC pass', async () => {
    const message = await signed('sender@origin.test', 'origin.test');
    const { reply, stored } = await send(system, 'sender@origin.test', message);
    assert.match(reply, /^250 2\.0\.0 /);
    const header = authResults(stored ?? '');
    assert.match(header, /^Authentication-Results: backup\.example\.test; /);
    assert.match(header, /\bdkim=pass\b[^;]*header\.[di]=@?origin\.test/);
    assert.match(header, /\bspf=pass\b[^;]*smtp\.mailfrom=sender@origin\.test/);
    assert.match(header, /\bdmarc=pass\b[^;]*header\.from=origin\.test/);
    assert.ok(stored?.endsWith(message), 'the message itself is unchanged below the headers we add');
  });

  it('reports SPF and DMARC failures but still accepts by default', async () => {
    const { reply, stored } = await send(system, 'ceo@bank.test', unsigned('ceo@bank.test'));
    assert.match(reply, /^250 2\.0\.0 /);
    const header = authResults(stored ?? '');
    assert.match(header, /\bspf=fail\b/);
    assert.match(header, /\bdkim=none\b/);
    assert.match(header, /\bdmarc=fail\b[^;]*header\.from=bank\.test/);
  });

  it('evaluates ARC: pass for an intact ARC set, fail for one broken on the way', async () => {
    const sealed = await arcSealed(unsigned('member@lax.test'));
    const intact = await send(system, 'list@forwarder.test', sealed);
    assert.match(intact.reply, /^250 2\.0\.0 /);
    assert.match(authResults(intact.stored ?? ''), /\barc=pass\b/);
    const broken = await send(system, 'list@forwarder.test', sealed.replace('Pay now.', 'Pay more now.'));
    assert.match(broken.reply, /^250 2\.0\.0 /, 'ARC results are reported, not enforced');
    assert.match(authResults(broken.stored ?? ''), /\barc=fail\b/);
  });
});

describe('ingress: DMARC_REJECT', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', DMARC_REJECT: 'true' }, { ingress: { resolver: fakeDns } });
  });
  after(() => system.close());

  it('refuses a DMARC failure under p=reject with 550 5.7.1 and stores nothing', async () => {
    const { reply, stored } = await send(system, 'ceo@bank.test', unsigned('ceo@bank.test'));
    assert.match(reply, /^550 5\.7\.1 .*DMARC/);
    assert.equal(stored, null);
    assert.equal((await system.store.stats()).messages, 0);
  });

  it('takes a DMARC failure under p=none, and mail that passes', async () => {
    assert.match((await send(system, 'ceo@lax.test', unsigned('ceo@lax.test'))).reply, /^250 2\.0\.0 /);
    assert.match((await send(system, 'sender@origin.test', await signed('sender@origin.test', 'origin.test'))).reply, /^250 2\.0\.0 /);
  });
});

describe('ingress: DNS that does not answer', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', DMARC_REJECT: 'true', DNS_TIMEOUT: '200ms', DNSBL_ZONES: 'bl.test' }, { ingress: { resolver: deadDns } });
  });
  after(() => system.close());

  it('neither blocks nor refuses mail: the lookups time out and the header says so', async () => {
    const { reply, stored } = await send(system, 'ceo@bank.test', unsigned('ceo@bank.test'));
    assert.match(reply, /^250 2\.0\.0 /);
    const header = authResults(stored ?? '');
    assert.match(header, /^Authentication-Results: backup\.example\.test; /);
    assert.match(header, /\bspf=temperror\b/);
    assert.match(header, /\bdmarc=temperror\b/);
  });
});

describe('ingress: DNS blocklists', () => {
  let system: System;
  before(async () => {
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', DNSBL_ZONES: 'clean.test, bl.test' }, { ingress: { resolver: fakeDns } });
  });
  after(() => system.close());

  it('refuses a listed client with 554 5.7.1 naming the zone, at every RCPT', async () => {
    const smtp = await openSession(system.port);
    await smtp.command('EHLO mail.origin.test');
    await smtp.command('MAIL FROM:<sender@origin.test>');
    assert.equal(await smtp.command('RCPT TO:<user@example.test>'), '554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using bl.test');
    assert.match(await smtp.command('RCPT TO:<other@example.test>'), /^554 5\.7\.1 /);
    assert.match(await smtp.command('DATA'), /^503 /);
    smtp.close();
    assert.ok(lookups.includes('A 1.0.0.127.bl.test') && lookups.includes('A 1.0.0.127.clean.test'));
    assert.equal((await system.store.stats()).messages, 0);
  });

  it('does not count a "query refused" answer (127.255.255.x) as a listing', async () => {
    const other = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', DNSBL_ZONES: 'refusing.test' }, { ingress: { resolver: fakeDns } });
    try {
      assert.match((await send(other, 'sender@origin.test', await signed('sender@origin.test', 'origin.test'))).reply, /^250 2\.0\.0 /);
    } finally {
      await other.close();
    }
  });
});
