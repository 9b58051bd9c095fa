import assert from 'node:assert/strict';
import { Buffer } from 'node:buffer';
import { spawn } from 'node:child_process';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { connect as connectTcp } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect as connectTls, type TLSSocket } from 'node:tls';
import nodemailer from 'nodemailer';
import { selfSigned } from './support/certificates.ts';
import { startIngressWithSpool } from './support/in-process.ts';
import { openSession, smtpReplies } from './support/smtp-session.ts';
import { tempDir, waitFor } from './support/util.ts';

/** EHLO, STARTTLS, then a TLS session on the same connection (certificate not checked: self-signed). */
async function startTls(port: number, options: { maxVersion?: 'TLSv1.3'; minVersion?: 'TLSv1.2' } = {}): Promise<TLSSocket> {
  const plain = connectTcp(port, '127.0.0.1');
  const smtp = smtpReplies(plain);
  assert.match(await smtp.reply(), /^220 /);
  assert.match(await smtp.command('EHLO client.origin.test'), /^250 /);
  assert.match(await smtp.command('STARTTLS'), /^220 /);
  smtp.detach();
  plain.setEncoding('binary' as BufferEncoding);
  return new Promise((resolve, reject) => {
    const secure = connectTls({ socket: plain, servername: 'backup.example.test', rejectUnauthorized: false, ...options }, () => resolve(secure));
    secure.once('error', reject);
  });
}

/** `openssl s_client -starttls smtp` against the ingress: its exit code and all it printed. */
function opensslStartTls(port: number, args: string[]): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-starttls', 'smtp', '-name', 'client.origin.test', '-servername', 'backup.example.test', ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end('QUIT\r\n');
  });
}

describe('ingress: STARTTLS', () => {
  let system: Awaited<ReturnType<typeof startIngressWithSpool>>;
  let dir: ReturnType<typeof tempDir>;
  let files: { cert: string; key: string };
  const resolver = async () => Promise.reject(Object.assign(new Error('not found'), { code: 'ENOTFOUND' }));
  before(async () => {
    dir = tempDir();
    files = selfSigned(dir.path, 'live', ['first.example.test']);
    system = await startIngressWithSpool({ RELAY_DOMAINS: 'example.test', GREETING_DELAY: '0', TLS_CERT: files.cert, TLS_KEY: files.key }, { ingress: { resolver, tlsWatchIntervalMs: 100 } });
  });
  after(async () => {
    await system.close();
    dir.remove();
  });

  it('advertises STARTTLS when TLS_CERT and TLS_KEY are set', async () => {
    const smtp = await openSession(system.port);
    const keywords = (await smtp.commandLines('EHLO client.origin.test')).slice(1).map((line) => line.slice(4));
    assert.ok(keywords.includes('STARTTLS'), keywords.join(' | '));
    smtp.close();
  });

  it('takes a message over STARTTLS (nodemailer, TLS required) and records ESMTPS and the cipher in Received', async () => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: system.port, secure: false, requireTLS: true, tls: { rejectUnauthorized: false, servername: 'backup.example.test' } });
    const info = await transport.sendMail({ envelope: { from: 'a@origin.test', to: ['user@example.test'] }, raw: 'Subject: secret\r\n\r\nover TLS\r\n' });
    transport.close();
    const id = /queued as ([0-9A-Z]+)/.exec(info.response)?.[1];
    assert.ok(id, info.response);
    const chunks: Buffer[] = [];
    for await (const chunk of await system.store.readBody(id)) chunks.push(chunk as Buffer);
    const header = Buffer.concat(chunks).toString('latin1').split('\r\n').slice(0, 4);
    assert.match(header[0] ?? '', /^Received: from \S+ \(\[127\.0\.0\.1\]\)$/);
    assert.match(header[1] ?? '', /^\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)$/);
    assert.match(header[2] ?? '', new RegExp(`^\\tby backup\\.example\\.test \\(backupmx\\) with ESMTPS id ${id}$`));
  });

  it('refuses TLS older than 1.2', async () => {
    // A TLS 1.1 client from openssl: Deno's node:tls cannot build one (it refuses maxVersion TLSv1.1 itself).
    const { code, output } = await opensslStartTls(system.port, ['-tls1_1', '-cipher', 'DEFAULT@SECLEVEL=0']);
    assert.match(output, /Cipher is \(NONE\)/, 'no TLS session');
    assert.notEqual(code, 0);
    // Node's server sends the alert protocol_version (RFC 8446 6.2); Deno's (rustls) hangs up without one.
    assert.match(output, 'Deno' in globalThis ? /unexpected eof/ : /alert protocol version/i);
    const accepted = await opensslStartTls(system.port, ['-tls1_2']);
    assert.match(accepted.output, /Protocol *: TLSv1\.2/, 'the same client gets TLS 1.2');
    await waitFor('the failed session to be let go', () => system.ingress.connections() === 0);
  });

  it('reloads a replaced certificate for new sessions without dropping the sessions in TLS', async () => {
    const first = await startTls(system.port);
    assert.equal(first.getPeerCertificate().subject.CN, 'first.example.test');
    const session = smtpReplies(first);
    assert.match(await session.command('EHLO client.origin.test'), /^250 /);

    // Replace both files the way certbot or a secret mount does: write aside, rename into place.
    const next = selfSigned(dir.path, 'next', ['second.example.test']);
    renameSync(next.key, files.key);
    renameSync(next.cert, files.cert);
    await waitFor('new sessions to get the new certificate', async () => {
      const probe = await startTls(system.port);
      const cn = probe.getPeerCertificate().subject.CN;
      probe.destroy();
      return cn === 'second.example.test';
    });

    // The session that started before the reload goes on and delivers.
    assert.match(await session.command('MAIL FROM:<a@origin.test>'), /^250 /);
    assert.match(await session.command('RCPT TO:<user@example.test>'), /^250 /);
    assert.match(await session.command('DATA'), /^354 /);
    assert.match(await session.command('Subject: across a reload\r\n\r\nhi\r\n.'), /^250 2\.0\.0 Ok: queued as /);
    first.destroy();
  });

  it('keeps the current certificate when a replacement does not match its key', async () => {
    const before = await startTls(system.port);
    const current = before.getPeerCertificate().subject.CN;
    before.destroy();
    const other = selfSigned(dir.path, 'other', ['third.example.test']);
    writeFileSync(files.cert, readFileSync(other.cert)); // the key stays the old one: a mismatch
    await new Promise((resolve) => setTimeout(resolve, 500));
    const probe = await startTls(system.port);
    assert.equal(probe.getPeerCertificate().subject.CN, current);
    probe.destroy();
  });
});
