import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import { probeSmtp } from '../services/health/src/probe.ts';

const HOST = '127.0.0.1';
const OPTIONS = { timeoutMs: 2000, heloName: 'backupmx.test' };

interface Closable {
  close(callback: () => void): unknown;
}

const servers: Closable[] = [];
const sockets = new Set<net.Socket>();

async function listen(server: net.Server | SMTPServer): Promise<number> {
  servers.push(server);
  const listening = new Promise<void>((resolve) => server.listen(0, HOST, () => resolve()));
  await listening;
  const address = (server instanceof SMTPServer ? server.server : server).address() as AddressInfo;
  return address.port;
}

/** A raw TCP peer; `onConnection` scripts what it says. */
function rawServer(onConnection: (socket: net.Socket) => void): net.Server {
  return net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    onConnection(socket);
  });
}

/** Splits what the client sends into lines and hands each to `onLine`. */
function onLines(socket: net.Socket, onLine: (line: string) => void): void {
  let buffer = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => {
    buffer += chunk;
    let i: number;
    while ((i = buffer.indexOf('\r\n')) !== -1) {
      const line = buffer.slice(0, i);
      buffer = buffer.slice(i + 2);
      onLine(line);
    }
  });
}

describe('probeSmtp against real peers', () => {
  let smtpPort = 0;
  let refusingGreetingPort = 0;
  let silentPort = 0;
  let closedPort = 0;
  let multilinePort = 0;
  let rejectingEhloPort = 0;
  const seenByMultiline: string[] = [];

  before(async () => {
    const smtp = new SMTPServer({ disabledCommands: ['AUTH'], logger: false });
    smtp.on('error', () => {});
    smtpPort = await listen(smtp);

    refusingGreetingPort = await listen(
      rawServer((socket) => socket.end('421 4.3.2 Service not available\r\n')),
    );

    silentPort = await listen(rawServer(() => {}));

    const probe = net.createServer();
    await new Promise<void>((resolve) => probe.listen(0, HOST, () => resolve()));
    closedPort = (probe.address() as AddressInfo).port;
    await new Promise<void>((resolve) => probe.close(() => resolve()));

    multilinePort = await listen(
      rawServer((socket) => {
        socket.write('220-a\r\n220 b\r\n');
        onLines(socket, (line) => {
          seenByMultiline.push(line);
          if (/^EHLO /i.test(line)) socket.write('250-multi.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
          else if (/^QUIT$/i.test(line)) socket.end('221 2.0.0 Bye\r\n');
          else socket.write('500 5.5.1 what\r\n');
        });
      }),
    );

    rejectingEhloPort = await listen(
      rawServer((socket) => {
        socket.write('220 grumpy.test ESMTP\r\n');
        onLines(socket, (line) => {
          if (/^EHLO /i.test(line)) socket.write('554 5.7.1 Go away\r\n');
          else if (/^QUIT$/i.test(line)) socket.end('221 2.0.0 Bye\r\n');
        });
      }),
    );
  });

  after(async () => {
    for (const socket of sockets) socket.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  });

  it('an smtp-server primary is ok, with its greeting and a latency', async () => {
    const result = await probeSmtp({ host: HOST, port: smtpPort }, OPTIONS);
    assert.equal(result.ok, true, JSON.stringify(result));
    assert.ok(result.ok);
    assert.match(result.greeting, /^220 .*ESMTP/);
    assert.equal(typeof result.latencyMs, 'number');
    assert.ok(result.latencyMs >= 0 && result.latencyMs < OPTIONS.timeoutMs, String(result.latencyMs));
  });

  it('a 421 greeting is a failure carrying the reply', async () => {
    const result = await probeSmtp({ host: HOST, port: refusingGreetingPort }, OPTIONS);
    assert.ok(!result.ok);
    assert.equal(result.error, 'greeting: 421 4.3.2 Service not available');
  });

  it('a peer that never speaks fails within the timeout', async () => {
    const started = Date.now();
    const result = await probeSmtp({ host: HOST, port: silentPort }, { ...OPTIONS, timeoutMs: 300 });
    const took = Date.now() - started;
    assert.ok(!result.ok);
    assert.equal(result.error, 'timeout after 300 ms waiting for greeting');
    assert.ok(took < 2000, `resolved after ${took} ms`);
    assert.ok(result.latencyMs >= 250, String(result.latencyMs));
  });

  it('a closed port fails with ECONNREFUSED', async () => {
    const result = await probeSmtp({ host: HOST, port: closedPort }, OPTIONS);
    assert.ok(!result.ok);
    assert.match(result.error, /ECONNREFUSED/);
    assert.match(result.error, /waiting for connection/);
  });

  it('a multi-line greeting and EHLO reply are read whole', async () => {
    const result = await probeSmtp({ host: HOST, port: multilinePort }, OPTIONS);
    assert.ok(result.ok, JSON.stringify(result));
    assert.equal(result.greeting, '220-a 220 b');
    // EHLO went out once, after the whole greeting, and the probe said QUIT.
    assert.deepEqual(seenByMultiline.slice(0, 2), ['EHLO backupmx.test', 'QUIT']);
  });

  it('a 554 answer to EHLO is a failure carrying the reply', async () => {
    const result = await probeSmtp({ host: HOST, port: rejectingEhloPort }, OPTIONS);
    assert.ok(!result.ok);
    assert.equal(result.error, 'EHLO: 554 5.7.1 Go away');
  });

  it('never throws, even for a bad port or heloName', async () => {
    const badPort = await probeSmtp({ host: HOST, port: 70000 }, OPTIONS);
    assert.ok(!badPort.ok);
    assert.match(badPort.error, /port/i);
    const badHelo = await probeSmtp({ host: HOST, port: smtpPort }, { ...OPTIONS, heloName: 'x\r\nRSET' });
    assert.ok(!badHelo.ok);
    assert.match(badHelo.error, /heloName/);
  });
});
