import type { MxResolver } from '../../services/deliverer/src/mx.ts';

export function dnsError(code: string): Error {
  return Object.assign(new Error(`query ${code}`), { code });
}

/** A resolver answering from tables; a name missing from a table has no such records (ENODATA). */
export function fakeResolver(mx: Record<string, { exchange: string; priority: number }[] | Error>, a: Record<string, string[]>): MxResolver & { asked: string[] } {
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
  };
}
