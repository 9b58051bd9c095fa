import type { MxResolver } from '../../services/deliverer/src/mx.ts';
import type { StsResolver } from '../../services/deliverer/src/mta-sts.ts';

export function dnsError(code: string): Error {
  return Object.assign(new Error(`query ${code}`), { code });
}

/**
 * A resolver answering from tables; a name missing from a table has no such records (ENODATA).
 * `txt` holds each name's TXT records, a record as its strings (MTA-STS: `_mta-sts.<domain>`).
 * The tables may be changed while a test runs.
 */
export function fakeResolver(
  mx: Record<string, { exchange: string; priority: number }[] | Error>,
  a: Record<string, string[]>,
  txt: Record<string, string[][] | Error> = {},
): MxResolver & StsResolver & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    async resolveMx(name) {
      asked.push(`MX ${name}`);
      const answer = mx[name];
      if (answer instanceof Error) throw answer;
      if (!answer) throw dnsError('ENODATA');
      return answer;
    },
    async resolve4(name) {
      asked.push(`A ${name}`);
      const answer = a[name];
      if (!answer) throw dnsError('ENODATA');
      return answer;
    },
    async resolve6(name) {
      asked.push(`AAAA ${name}`);
      throw dnsError('ENODATA');
    },
    async resolveTxt(name) {
      asked.push(`TXT ${name}`);
      const answer = txt[name];
      if (answer instanceof Error) throw answer;
      if (!answer) throw dnsError('ENODATA');
      return answer;
    },
  };
}
