/**
 * `node bench/next-hop-tls.ts`: what TLS to the next hop costs the deliverer's SMTP client. Sends
 * MESSAGES messages of SIZE bytes with CONCURRENCY transactions at a time (connections pooled, as
 * the deliverer does) to a real smtp-server on loopback, once per way: no STARTTLS offered;
 * PRIMARY_TLS=may; encrypt; verify against a CA made now with openssl; encrypt with a pin; the ways
 * interleaved over ROUNDS rounds (a shared machine is noisy). Prints each way's median messages
 * per second and its rounds. Prints numbers; it is not a test.
 */
import { Buffer } from 'node:buffer';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { createSmtpClient, type HopTls } from '../services/deliverer/src/smtp-client.ts';
import { certificatePins } from '../shared/src/mail/peer-tls.ts';
import { SYSTEM_TRUST } from '../shared/src/rules/next-hop-tls.ts';
import { makeCa, issue } from '../test/support/certificates.ts';
import { startPeer } from '../test/support/dsn-peers.ts';
import { tempDir } from '../test/support/util.ts';
import { X509Certificate } from 'node:crypto';

const { values: args } = parseArgs({
  options: { messages: { type: 'string', default: '2000' }, size: { type: 'string', default: '4096' }, concurrency: { type: 'string', default: '5' }, rounds: { type: 'string', default: '3' } },
});
const ROUNDS = Number(args.rounds);
const MESSAGES = Number(args.messages);
const CONCURRENCY = Number(args.concurrency);
const body = Buffer.alloc(Number(args.size), 'x');
const raw = Buffer.concat([Buffer.from('From: <a@origin.test>\r\nSubject: bench\r\n\r\n'), body, Buffer.from('\r\n')]);

const dir = tempDir();
const ca = makeCa(dir.path);
const leaf = issue(ca, dir.path, 'primary', ['127.0.0.1']);
const pin = certificatePins(new X509Certificate(leaf.certPem).raw)[0] ?? '';
const plain = await startPeer();
const secure = await startPeer({}, { tls: { key: leaf.keyPem, cert: leaf.certPem } });

/** Messages per second of one way. */
async function run(port: number, tls: HopTls, systemCa?: string[]): Promise<number> {
  const client = createSmtpClient({ name: 'backup.example.test', maxConnections: CONCURRENCY, ...(systemCa ? { systemCa } : {}) });
  let next = 0;
  let failed = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < MESSAGES) {
        next += 1;
        const attempt = await client.send([{ host: '127.0.0.1', port }], { from: 'a@origin.test', recipients: [{ address: 'u@example.test' }], size: raw.length }, async () => Readable.from([raw]), tls);
        if ('error' in attempt) failed += 1;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  client.close();
  if (failed) throw new Error(`${failed} of ${MESSAGES} sends failed`);
  return MESSAGES / seconds;
}

const level = (name: 'may' | 'encrypt' | 'verify', pins: string[] = []): HopTls => ({ requirement: { level: name, trust: [SYSTEM_TRUST], pins } });
const ways: [string, () => Promise<number>][] = [
  ['no STARTTLS offered (may)', () => run(plain.port, level('may'))],
  ['STARTTLS, PRIMARY_TLS=may', () => run(secure.port, level('may'))],
  ['STARTTLS, PRIMARY_TLS=encrypt', () => run(secure.port, level('encrypt'))],
  ['STARTTLS, PRIMARY_TLS=verify (CA)', () => run(secure.port, level('verify'), [ca.certPem])],
  ['STARTTLS, encrypt + PRIMARY_TLS_PIN', () => run(secure.port, level('encrypt', [pin]))],
];
try {
  const rates = ways.map((): number[] => []);
  for (let round = 0; round < ROUNDS; round += 1) for (const [index, [, way]] of ways.entries()) rates[index]?.push(await way());
  console.log(`${MESSAGES} messages x ${body.length} B, ${CONCURRENCY} at a time, ${ROUNDS} rounds; msg/s median (rounds)`);
  for (const [index, [label]] of ways.entries()) {
    const list = rates[index] ?? [];
    const median = [...list].sort((a, b) => a - b)[Math.floor(list.length / 2)] ?? 0;
    console.log(`${label.padEnd(36)} ${String(Math.round(median)).padStart(6)}  (${list.map(Math.round).join(', ')})`);
  }
} finally {
  await plain.close();
  await secure.close();
  dir.remove();
}
