import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { createServer, type Server } from 'node:https';
import { after, before, describe, it } from 'node:test';
import { makeCa, issue, selfSigned, type Certificate } from './support/certificates.ts';
import { sendAndAttempt, startPeer, startSystem, type Peer, type System } from './support/dsn-peers.ts';
import { fakeResolver } from './support/fake-resolver.ts';
import { captureLog } from './support/log-capture.ts';
import { tempDir, waitFor } from './support/util.ts';

/**
 * MTA-STS (RFC 8461) for PRIMARY=mx with the fake resolver (no internet): the `_mta-sts` TXT record
 * comes from it, the policy from a real HTTPS server on loopback whose certificate (for
 * mta-sts.example.test) and the MX host's (good.example.test) come from a CA made now with openssl;
 * the deliverer is given that CA in place of the system's, and the policy server's port.
 */

const policyText = (mode: string, mx: string[]) => `version: STSv1\r\nmode: ${mode}\r\n${mx.map((host) => `mx: ${host}\r\n`).join('')}max_age: 86400\r\n`;

let dir: ReturnType<typeof tempDir>;
let ca: Certificate;
let policyCert: Certificate;
let mxCert: Certificate;

before(() => {
  dir = tempDir();
  ca = makeCa(dir.path);
  policyCert = issue(ca, dir.path, 'policy', ['mta-sts.example.test', 'mta-sts.origin.test']);
  // One real server plays every MX host (they share the MX port): its certificate names them all.
  mxCert = issue(ca, dir.path, 'mx', ['good.example.test', 'evil.example.test']);
});
after(() => dir.remove());

/** A real HTTPS server serving /.well-known/mta-sts.txt for policy host `host`; `requests` counts what it was asked. */
async function startPolicyServer(text: string, port = 0, host = 'mta-sts.example.test') {
  let requests = 0;
  const server: Server = createServer({ key: policyCert.keyPem, cert: policyCert.certPem }, (req, res) => {
    requests += 1;
    if (req.url !== '/.well-known/mta-sts.txt' || req.headers.host !== host) return void res.writeHead(404).end();
    res.writeHead(200, { 'content-type': 'text/plain' }).end(text);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as AddressInfo).port,
    requests: () => requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** DNS: example.test's MX hosts (and ours, backup.example.test, at 20), every name at 127.0.0.1, the `_mta-sts` TXT record. */
function dns(mxHosts: string[], id: string) {
  return fakeResolver(
    { 'example.test': [...mxHosts.map((exchange) => ({ exchange, priority: 10 })), { exchange: 'backup.example.test', priority: 20 }] },
    { 'good.example.test': ['127.0.0.1'], 'evil.example.test': ['127.0.0.1'], 'mta-sts.example.test': ['127.0.0.1'] },
    { '_mta-sts.example.test': [[`v=STSv1; id=${id};`]] },
  );
}

async function startMxSystem(peer: Peer, resolver: ReturnType<typeof dns>, policyPort: number, options: { dataDir?: string; log?: ReturnType<typeof captureLog>['log'] } = {}) {
  return startSystem(
    { PRIMARY: 'mx' },
    { ...options, deliverer: { resolver, mxPort: peer.port, localAddresses: ['192.0.2.99'], mtaStsPort: policyPort, systemCa: [ca.certPem] } },
  );
}

/**
 * A policy server with `policy`, an MX peer (`peerTls`: its STARTTLS certificate, none: no STARTTLS),
 * DNS naming `mxHosts` and policy `id`, and the system; `run` gets them, everything is closed after.
 */
async function withPolicy(
  policy: string,
  peerTls: Certificate | null,
  mxHosts: string[],
  id: string,
  run: (parts: { system: System; peer: Peer; policy: Awaited<ReturnType<typeof startPolicyServer>>; capture: ReturnType<typeof captureLog> }) => Promise<void>,
) {
  const server = await startPolicyServer(policy);
  const peer = await startPeer({}, peerTls ? { tls: { key: peerTls.keyPem, cert: peerTls.certPem } } : {});
  const capture = captureLog();
  const system = await startMxSystem(peer, dns(mxHosts, id), server.port, { log: capture.log });
  try {
    await run({ system, peer, policy: server, capture });
  } finally {
    await system.close();
    await peer.close();
    await server.close();
  }
}

describe('MTA-STS enforce', () => {
  it('refuses an MX host the policy does not name: deferred with 4.7.5, the host never contacted', async () => {
    await withPolicy(policyText('enforce', ['good.example.test']), mxCert, ['evil.example.test'], 'one', async ({ system, peer, policy, capture }) => {
      const delivery = await sendAndAttempt(system, 'evil mx');
      assert.equal(delivery.state, 'queued', 'kept, never bounced for it');
      assert.equal(delivery.lastReply, '4.7.5 MTA-STS policy of example.test (id one, mode enforce) names none of its MX hosts (evil.example.test); the mail waits');
      assert.equal(peer.connections(), 0, 'the MX host outside the policy is not contacted');
      assert.equal(policy.requests(), 1);
      assert.deepEqual(capture.entries('MTA-STS: MX hosts not in the policy skipped')[0]?.skipped, ['evil.example.test']);
    });
  });

  it('delivers to an MX host the policy names, over TLS verified for that name', async () => {
    await withPolicy(policyText('enforce', ['*.example.test']), mxCert, ['good.example.test'], 'two', async ({ system, peer, capture }) => {
      const delivery = await sendAndAttempt(system, 'good mx');
      assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
      assert.equal(peer.messages[0]?.secure, true);
      // The deliverer logs the delivery once its settle has returned, which can be a moment after the store shows it.
      const logged = await waitFor("the deliverer's log line", () => capture.entries('delivered')[0]);
      assert.equal(logged.tls, 'TLSv1.3 verified');
    });
  });

  it('refuses an MX host in the policy whose certificate does not verify (self-signed): 4.7.5, no MAIL', async () => {
    const bad = selfSigned(dir.path, 'good-self', ['good.example.test']);
    await withPolicy(policyText('enforce', ['good.example.test']), bad, ['good.example.test'], 'three', async ({ system, peer }) => {
      const delivery = await sendAndAttempt(system, 'unverified mx');
      assert.equal(delivery.state, 'queued');
      assert.equal(delivery.lastReply, `4.7.5 Server certificate not trusted: host good.example.test[127.0.0.1]:${peer.port} (DEPTH_ZERO_SELF_SIGNED_CERT)`);
      assert.equal(peer.mailCommands(), 0);
    });
  });

  it('keeps applying the cached policy across a restart while the policy server is down', async () => {
    const dataDir = tempDir();
    let policy = await startPolicyServer(policyText('enforce', ['good.example.test']));
    const policyPort = policy.port;
    const peer = await startPeer({}, { tls: { key: mxCert.keyPem, cert: mxCert.certPem } });
    try {
      const first = await startMxSystem(peer, dns(['good.example.test'], 'four'), policyPort, { dataDir: dataDir.path });
      try {
        assert.equal((await sendAndAttempt(first, 'policy fetched')).state, 'delivered');
      } finally {
        await first.close();
      }
      await policy.close();
      // After the restart: the TXT id changed (so the policy is fetched again, and that fails) and
      // DNS now names an MX host outside the cached policy: only the cache can refuse it.
      const capture = captureLog();
      const second = await startMxSystem(peer, dns(['evil.example.test'], 'five'), policyPort, { dataDir: dataDir.path, log: capture.log });
      try {
        const delivery = await sendAndAttempt(second, 'policy server down');
        assert.equal(delivery.state, 'queued');
        assert.equal(delivery.lastReply, '4.7.5 MTA-STS policy of example.test (id four, mode enforce) names none of its MX hosts (evil.example.test); the mail waits');
        assert.equal(peer.messages.length, 1, 'only the first message arrived');
        const failed = capture.entries('MTA-STS: policy fetch failed');
        assert.equal(failed.length, 1, capture.lines.join(''));
        assert.equal(failed[0]?.id, 'five');
      } finally {
        await second.close();
      }
      // The server is back with the new policy: it is fetched once the retry pause is over; here, with a fresh process.
      policy = await startPolicyServer(policyText('enforce', ['good.example.test', 'evil.example.test']), policyPort);
      const third = await startMxSystem(peer, dns(['evil.example.test'], 'five'), policyPort, { dataDir: dataDir.path });
      try {
        assert.equal((await sendAndAttempt(third, 'new policy')).state, 'delivered');
      } finally {
        await third.close();
      }
    } finally {
      await peer.close();
      await policy.close();
      dataDir.remove();
    }
  });
});

describe('MTA-STS testing', () => {
  it('delivers as before (MX host outside the policy, no TLS) and logs what enforce would have refused', async () => {
    await withPolicy(policyText('testing', ['good.example.test']), null, ['evil.example.test'], 'six', async ({ system, peer, capture }) => {
      const delivery = await sendAndAttempt(system, 'testing mode');
      assert.equal(delivery.state, 'delivered', delivery.lastReply ?? '');
      assert.equal(peer.messages[0]?.secure, false);
      const logged = capture.entries('MTA-STS testing: enforce mode would have refused this delivery');
      assert.equal(logged.length, 1, capture.lines.join(''));
      assert.equal(logged[0]?.policyId, 'six');
      assert.equal(logged[0]?.reason, 'MX host evil.example.test is not in the policy (mx: good.example.test)');
    });
  });

  it('logs when the MX host is named but its TLS would not pass (STARTTLS not offered)', async () => {
    await withPolicy(policyText('testing', ['good.example.test']), null, ['good.example.test'], 'seven', async ({ system, peer, capture }) => {
      assert.equal((await sendAndAttempt(system, 'testing, no tls')).state, 'delivered');
      const [logged] = capture.entries('MTA-STS testing: enforce mode would have refused this delivery');
      assert.equal(logged?.reason, `4.7.4 TLS is required, but was not offered by host good.example.test[127.0.0.1]:${peer.port}`);
    });
  });
});

describe('MTA-STS for reports to other domains', () => {
  it('holds a delivery report back from a sender domain\'s MX host its enforce policy does not name', async () => {
    const policy = await startPolicyServer(policyText('enforce', ['other.origin.test']), 0, 'mta-sts.origin.test');
    // One real server is the primary and origin.test's MX host; it refuses bad@example.test.
    const peer = await startPeer({ rcpt: { 'bad@example.test': '550 5.1.1 <bad@example.test>: User unknown' } });
    const resolver = fakeResolver(
      { 'origin.test': [{ exchange: 'mx.origin.test', priority: 10 }] },
      { 'mx.origin.test': ['127.0.0.1'], 'mta-sts.origin.test': ['127.0.0.1'] },
      { '_mta-sts.origin.test': [['v=STSv1; id=r1;']] },
    );
    const system = await startSystem(
      { PRIMARY: `127.0.0.1:${peer.port}` },
      { deliverer: { resolver, mxPort: peer.port, localAddresses: ['192.0.2.99'], mtaStsPort: policy.port, systemCa: [ca.certPem] } },
    );
    try {
      assert.equal((await sendAndAttempt(system, 'bounce me', 'bad@example.test')).state, 'failed');
      const report = await waitFor('the report\'s attempt', async () => {
        const delivery = (await system.store.list({ sender: '<>' })).items[0]?.deliveries[0];
        return delivery?.attempts ? delivery : null;
      });
      assert.equal(report.route, 'mx:origin.test');
      assert.equal(report.state, 'queued');
      assert.equal(report.lastReply, '4.7.5 MTA-STS policy of origin.test (id r1, mode enforce) names none of its MX hosts (mx.origin.test); the mail waits');
      assert.equal(peer.messages.filter((message) => message.from === '').length, 0, 'the report did not go to the MX host outside the policy');
    } finally {
      await system.close();
      await peer.close();
      await policy.close();
    }
  });
});
