import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * A RabbitMQ virtual host of our own on the real broker at 127.0.0.1:5672, so that tests never see
 * each other's queues (or what an earlier run left behind). Removed by `remove()`.
 */
export function createVhost(): { url: string; name: string; remove: () => void } {
  const name = `backupmx-test-${randomBytes(4).toString('hex')}`;
  const ctl = (...args: string[]) => execFileSync('rabbitmqctl', ['-q', ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  ctl('add_vhost', name);
  ctl('set_permissions', '-p', name, 'guest', '.*', '.*', '.*');
  return {
    name,
    url: `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(name)}`,
    remove: () => {
      try {
        ctl('delete_vhost', name);
      } catch {
        // best effort
      }
    },
  };
}
