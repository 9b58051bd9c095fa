/**
 * `backupmx`: the admin API from a shell (see bin/backupmx.js). BACKUPMX_API (default
 * http://127.0.0.1:8025) and ADMIN_TOKEN come from the environment.
 */
import { parseArgs } from 'node:util';
import { hashPassword } from '@backupmx/spool/src/console/password.ts';
import { callApi, CliError, EXIT, type ApiOptions } from './api.ts';
import { readPassword, type PasswordInput } from './password-prompt.ts';
import { deadTable, messageDetail, queueTable, statusText, type DeadView, type MessageDetailView, type MessageView, type StatusView } from './format.ts';

export const USAGE = `usage: backupmx COMMAND [ARGS]

  queue [--state S] [--domain D] [--sender TEXT] [--recipient TEXT] [--age 1h] [--limit N] [--offset N]
                      the queue, like mailq (held messages are marked !)
  show ID             envelope, per-recipient state, every attempt, the trace
  flush [DOMAIN]      deliver everything queued (for DOMAIN's primary) now
  retry ID...         make the messages' queued deliveries due now
  hold ID...          keep the messages; never attempt them until released
  release ID...       release held messages
  delete ID...        remove the messages from the queue for good
  retry|hold|release|delete [--domain D] [--state S] [--sender TEXT] [--recipient TEXT] [--age 1h] [--all] [--dry-run]
                      the same for every message matching the filter (--all: every message);
                      --dry-run only counts them
  status              primaries and spool depth at a glance
  dead                the dead-letter queue
  replay ID           put a dead letter back into the spool
  hash-password       read a password (twice from a terminal, or one line from stdin) and print
                      its hash for domains.<domain>.VIEWERS in the config file
Options: --json (the API's JSON), -h/--help.
Environment: BACKUPMX_API (default http://127.0.0.1:8025), ADMIN_TOKEN.
`;

const DONE = { retry: 'due now', hold: 'held', release: 'released', delete: 'deleted' } as const;
const VERB = { retry: 'retry', hold: 'hold', release: 'release', delete: 'delete' } as const;
const FILTER_KEYS = ['state', 'domain', 'sender', 'recipient', 'age'] as const;
const plural = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

type Out = { write(text: string): unknown };

function one(positionals: string[], what: string): string {
  if (positionals.length !== 1 || !positionals[0]) throw new CliError(`expected one ${what}\n${USAGE}`, EXIT.usage);
  return positionals[0];
}

/** Run one command; returns the exit code. Errors go to `err` as one line prefixed `backupmx: `. */
export async function run(argv: string[], env: Record<string, string | undefined>, out: Out, err: Out, stdin?: PasswordInput): Promise<number> {
  try {
    const { values, positionals } = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
        state: { type: 'string' },
        domain: { type: 'string' },
        sender: { type: 'string' },
        recipient: { type: 'string' },
        age: { type: 'string' },
        limit: { type: 'string' },
        offset: { type: 'string' },
        all: { type: 'boolean' },
        'dry-run': { type: 'boolean' },
      },
    });
    const [command, ...rest] = positionals;
    if (values.help || command === undefined || command === 'help') {
      (command === undefined && !values.help ? err : out).write(USAGE);
      return command === undefined && !values.help ? EXIT.usage : 0;
    }
    const api: ApiOptions = { base: env.BACKUPMX_API || 'http://127.0.0.1:8025', token: env.ADMIN_TOKEN || undefined };
    const show = (body: unknown, text: () => string) => out.write(values.json ? `${JSON.stringify(body, null, 2)}\n` : text());
    const id = (what = 'queue id') => encodeURIComponent(one(rest, what));

    switch (command) {
      case 'queue':
      case 'mailq': {
        if (rest.length) throw new CliError(`queue takes options, not ${rest.join(' ')}`, EXIT.usage);
        const query = new URLSearchParams();
        for (const key of ['state', 'domain', 'sender', 'recipient', 'age', 'limit', 'offset'] as const) {
          const value = values[key];
          if (value !== undefined) query.set(key, value);
        }
        const { body } = await callApi(api, 'GET', `api/queue${query.size ? `?${query}` : ''}`);
        show(body, () => queueTable(body as { total: number; offset: number; items: MessageView[] }));
        return 0;
      }
      case 'show': {
        const { body } = await callApi(api, 'GET', `api/queue/${id()}`);
        show(body, () => messageDetail(body as MessageDetailView));
        return 0;
      }
      case 'retry':
      case 'hold':
      case 'release':
      case 'delete': {
        const filter = Object.fromEntries(FILTER_KEYS.flatMap((key) => (values[key] === undefined ? [] : [[key, values[key]]])));
        const byFilter = values.all || Object.keys(filter).length > 0;
        if (byFilter && rest.length) throw new CliError(`${command} takes queue ids or filter options, not both\n${USAGE}`, EXIT.usage);
        if (!byFilter && rest.length === 0) throw new CliError(`${command}: name queue ids, or a filter (--domain, --state, ...; --all for every message)\n${USAGE}`, EXIT.usage);
        if (values['dry-run'] && !byFilter) throw new CliError(`--dry-run counts the messages of a filter\n${USAGE}`, EXIT.usage);
        if (!byFilter && rest.length === 1) {
          const { body } = command === 'delete' ? await callApi(api, 'DELETE', `api/queue/${id()}`) : await callApi(api, 'POST', `api/queue/${id()}/${command}`);
          const done = body as { id: string; deliveries?: number };
          show(body, () => (command === 'delete' ? `${done.id}: deleted\n` : `${done.id}: ${DONE[command]} (${plural(done.deliveries ?? 0, 'delivery', 'deliveries')})\n`));
          return 0;
        }
        const request = byFilter ? { filter, ...(values['dry-run'] ? { dryRun: true } : {}) } : { ids: rest };
        const { body } = await callApi(api, 'POST', `api/queue/${command}`, request);
        const done = body as { matched: number; messages: number; deliveries: number; before?: string; remaining?: number };
        show(body, () =>
          values['dry-run']
            ? `would ${VERB[command]} ${plural(done.matched, 'message', 'messages')} (received up to ${done.before})\n`
            : `${DONE[command]}: ${plural(done.messages, 'message', 'messages')} (${plural(done.deliveries, 'delivery', 'deliveries')}) of ${done.matched} matching${done.remaining ? `; ${done.remaining} more: run it again` : ''}\n`,
        );
        return 0;
      }
      case 'hash-password': {
        if (rest.length) throw new CliError(`hash-password reads the password from the terminal or stdin, never from the command line\n${USAGE}`, EXIT.usage);
        const password = await readPassword(stdin ?? (process.stdin as PasswordInput), err);
        if (password.length < 8) throw new CliError('a password needs at least 8 characters', EXIT.usage);
        out.write(`${await hashPassword(password)}\n`);
        return 0;
      }
      case 'flush': {
        if (rest.length > 1) throw new CliError(`flush takes at most one domain\n${USAGE}`, EXIT.usage);
        const { body } = await callApi(api, 'POST', 'api/flush', rest[0] ? { domain: rest[0] } : {});
        show(body, () => `flush requested for ${rest[0] ? `${rest[0]} (route ${(body as { flushed: string }).flushed})` : 'every route'}\n`);
        return 0;
      }
      case 'status': {
        const { body } = await callApi(api, 'GET', 'api/status');
        show(body, () => statusText(body as StatusView));
        return 0;
      }
      case 'dead': {
        const { body } = await callApi(api, 'GET', `api/dead${values.limit ? `?limit=${encodeURIComponent(values.limit)}` : ''}`);
        show(body, () => deadTable(body as DeadView));
        return 0;
      }
      case 'replay': {
        const { body } = await callApi(api, 'POST', `api/dead/${id('dead-letter id')}/replay`);
        show(body, () => `${(body as { id: string }).id}: replayed into the spool\n`);
        return 0;
      }
      default:
        throw new CliError(`unknown command ${JSON.stringify(command)}\n${USAGE}`, EXIT.usage);
    }
  } catch (error) {
    if (error instanceof CliError) {
      err.write(`backupmx: ${error.message}${error.message.endsWith('\n') ? '' : '\n'}`);
      return error.exitCode;
    }
    if ((error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err.write(`backupmx: ${(error as Error).message}\n${USAGE}`);
      return EXIT.usage;
    }
    err.write(`backupmx: ${(error as Error).message}\n`);
    return EXIT.failure;
  }
}
