/**
 * Any RabbitMQ password works (issue 13, defect 2): AMQP_USER and AMQP_PASSWORD are taken literally,
 * so a password holding `@ : / % #` and a space needs no URL encoding (the old advice, URL-encode it
 * in AMQP_URL, locked every service out: RabbitMQ's RABBITMQ_DEFAULT_PASS takes the same value
 * literally). Against the real RabbitMQ, with a user of this test's own on its own virtual host.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { brokerCredentials } from '../shared/src/runtime/process.ts';
import { assertAllDelivered, sendMessages } from './support/mail.ts';
import { startPrimary } from './support/primary.ts';
import { spawnService, waitReady, type Service } from './support/processes.ts';
import { createVhost } from './support/rabbitmq.ts';
import { freePort, tempDir, waitFor } from './support/util.ts';

const PASSWORD = 'p@ss:w/rd%40 #1 x';

describe('RabbitMQ credentials taken literally (AMQP_USER, AMQP_PASSWORD)', () => {
  it('replace the user and password of AMQP_URL; the other one of the pair comes from the URL, decoded', () => {
    assert.equal(brokerCredentials({ AMQP_URL: 'amqp://u:p@h/' }), undefined, 'neither given: the URL decides (amqplib)');
    assert.deepEqual(brokerCredentials({ AMQP_URL: 'amqp://h:5672/', AMQP_USER: 'backupmx', AMQP_PASSWORD: PASSWORD }), { user: 'backupmx', password: PASSWORD });
    assert.deepEqual(brokerCredentials({ AMQP_URL: 'amqp://old:p%40ss@h/', AMQP_USER: 'new' }), { user: 'new', password: 'p@ss' });
    assert.deepEqual(brokerCredentials({ AMQP_URL: 'amqp://h/', AMQP_PASSWORD: 'x' }), { user: 'guest', password: 'x' });
  });

  describe('npm start over RabbitMQ with a password holding @ : / % # and a space', () => {
    const vhost = createVhost();
    const user = `backupmx-test-${randomBytes(4).toString('hex')}`;
    const ctl = (...args: string[]) => execFileSync('rabbitmqctl', ['-q', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
    const dir = tempDir();
    let primary: Awaited<ReturnType<typeof startPrimary>>;
    let service: Service | null = null;
    let env: Record<string, string> = {};

    before(async () => {
      ctl('add_user', user, PASSWORD);
      ctl('set_permissions', '-p', vhost.name, user, '.*', '.*', '.*');
      primary = await startPrimary();
      env = {
        RELAY_DOMAINS: 'example.test',
        PRIMARY: `127.0.0.1:${primary.port}`,
        SMTP_HOST: '127.0.0.1',
        SMTP_PORT: String(await freePort()),
        HTTP_HOST: '127.0.0.1',
        HTTP_PORT: String(await freePort()),
        DATA_DIR: join(dir.path, 'data'),
        SENDER_AUTH: 'false',
        AMQP_URL: `amqp://127.0.0.1:5672/${encodeURIComponent(vhost.name)}`,
        AMQP_USER: user,
        AMQP_PASSWORD: PASSWORD,
      };
    });
    after(async () => {
      await service?.stop('SIGKILL');
      await primary.close();
      try {
        ctl('delete_user', user);
      } catch {
        // best effort
      }
      vhost.remove();
      dir.remove();
    });

    it('logs in with it and passes mail end to end through RabbitMQ', async () => {
      service = spawnService('all', 'all', env, join(dir.path, 'logs'));
      await waitReady(service);
      const connections = execFileSync('rabbitmqctl', ['-q', 'list_connections', 'user', 'vhost'], { encoding: 'utf8', timeout: 60_000 });
      assert.ok(connections.split('\n').some((line) => line.startsWith(`${user}\t${vhost.name}`)), `a connection as ${user} on ${vhost.name}:\n${connections}`);
      const sent = await sendMessages(Number(env.SMTP_PORT), 3);
      await waitFor('3 messages at the primary', () => primary.messages.length >= 3, 30_000);
      assert.equal(assertAllDelivered(sent, primary.messages), 3);
      assert.equal(await service.stop(), 0);
    });

    it('a wrong password is refused by RabbitMQ: not ready, and the log says why', async () => {
      service = spawnService('wrong', 'all', { ...env, AMQP_PASSWORD: `${PASSWORD}!` }, join(dir.path, 'logs'));
      const response = await waitFor('an HTTP answer', () => fetch(`http://127.0.0.1:${env.HTTP_PORT}/readyz`).catch(() => null), 120_000);
      assert.equal(response.status, 503);
      assert.deepEqual(((await response.json()) as { checks: Record<string, boolean> }).checks.broker, false);
      assert.equal(await service.stop(), 0);
      assert.match(readFileSync(join(dir.path, 'logs', 'wrong.log'), 'utf8'), /"msg":"amqp connect failed".*403 \(ACCESS-REFUSED\)|403 \(ACCESS-REFUSED\).*"msg":"amqp connect failed"/);
    });
  });
});
