/**
 * A Postfix backup MX of the bench's own, for side-by-side figures: `postfix -c DIR` with its own
 * main.cf / master.cf, queue and data directories, listening on 127.0.0.1:PORT only, relaying
 * example.test to 127.0.0.1:PRIMARY_PORT. It never reads or changes /etc/postfix's running state
 * (no system Postfix is started, stopped or reconfigured). Needs root (Postfix's master does).
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** Why Postfix cannot run here, or null when it can. */
export function postfixUnavailable(find: (tool: string) => string | null): string | null {
  if (process.getuid?.() !== 0) return 'not running as root (Postfix\'s master needs root)';
  for (const tool of ['postfix', 'postqueue', 'postconf']) if (!find(tool)) return `${tool} not found (apt-get install postfix)`;
  try {
    execFileSync('id', ['postfix'], { stdio: 'ignore' });
  } catch {
    return 'no "postfix" user (apt-get install postfix)';
  }
  return null;
}

export interface PostfixInstance {
  dir: string;
  /** Messages in the queue (incoming, active, deferred, hold, maildrop). */
  queued(): number;
  /** Messages in the active queue (being tried right now). */
  active(): number;
  /** `postqueue -f`: try everything now. */
  flush(): void;
  /** PIDs of the instance's processes (master and its children). */
  pids(): number[];
  stop(): void;
}

const SERVICES = `# service type private unpriv chroot wakeup maxproc command
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`;

export function startPostfix(dir: string, port: number, primaryPort: number): PostfixInstance {
  const config = join(dir, 'etc');
  const queue = join(dir, 'queue');
  mkdirSync(config, { recursive: true });
  mkdirSync(join(dir, 'data'), { recursive: true });
  mkdirSync(queue, { recursive: true });
  chmodSync(dir, 0o755);
  execFileSync('chown', ['postfix', join(dir, 'data')]);
  // Postfix defaults apart from where it lives, what it relays and where to.
  writeFileSync(
    join(config, 'main.cf'),
    [
      'compatibility_level = 3.6',
      `queue_directory = ${queue}`,
      `data_directory = ${join(dir, 'data')}`,
      'mail_owner = postfix',
      'setgid_group = postdrop',
      `maillog_file_prefixes = ${dir}`,
      `maillog_file = ${join(dir, 'maillog')}`,
      'myhostname = postfix-backup.example.test',
      'mydestination =',
      'inet_interfaces = 127.0.0.1',
      'inet_protocols = ipv4',
      'mynetworks = 127.0.0.0/8',
      'relay_domains = example.test',
      'smtpd_relay_restrictions = reject_unauth_destination',
      `transport_maps = inline:{ example.test=relay:[127.0.0.1]:${primaryPort} }`,
      'smtp_tls_security_level = none',
      'smtpd_tls_security_level = none',
      'alias_maps =',
      'alias_database =',
      'local_recipient_maps =',
      'biff = no',
      '',
    ].join('\n'),
  );
  writeFileSync(join(config, 'master.cf'), `127.0.0.1:${port} inet n - n - - smtpd\n${SERVICES}`);
  const postfix = (...argv: string[]) => execFileSync('postfix', ['-c', config, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  postfix('set-permissions');
  postfix('start');
  const count = (...subdirs: string[]) => {
    let n = 0;
    const walk = (path: string) => {
      let entries;
      try {
        entries = readdirSync(path, { withFileTypes: true });
      } catch {
        return;
      }
      for (const entry of entries) entry.isDirectory() ? walk(join(path, entry.name)) : n++;
    };
    for (const sub of subdirs) walk(join(queue, sub));
    return n;
  };
  const masterPid = () => {
    try {
      return Number(readFileSync(join(queue, 'pid', 'master.pid'), 'utf8').trim());
    } catch {
      return null;
    }
  };
  return {
    dir,
    queued: () => count('maildrop', 'incoming', 'active', 'deferred', 'hold'),
    active: () => count('active', 'incoming'),
    flush: () => void execFileSync('postqueue', ['-c', config, '-f'], { stdio: 'ignore' }),
    pids() {
      const master = masterPid();
      if (!master) return [];
      const parents = new Map<number, number>();
      for (const name of readdirSync('/proc')) {
        if (!/^\d+$/.test(name)) continue;
        try {
          const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
          parents.set(Number(name), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
        } catch {
          // gone
        }
      }
      return [master, ...[...parents].filter(([, parent]) => parent === master).map(([pid]) => pid)];
    },
    stop() {
      if (existsSync(join(queue, 'pid', 'master.pid'))) {
        try {
          postfix('stop');
        } catch {
          const pid = masterPid();
          if (pid) process.kill(pid, 'SIGKILL');
        }
      }
    },
  };
}
