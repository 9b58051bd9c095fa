/**
 * `node bench/profile-summary.ts FILE.cpuprofile...`: self time by module (a package under
 * node_modules, one of our source files, node's internals, or a native call such as SQLite's
 * exec/run), largest first, with the share of the profile's busy (not idle) time.
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string };
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

function moduleOf(node: Node): string {
  const { url, functionName } = node.callFrame;
  if (!url) return functionName.startsWith('(') ? functionName : `(native) ${functionName || 'anonymous'}`;
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return pkg[1] as string;
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  const own = /\/((?:shared|services|src)\/.*)$/.exec(url);
  return own ? (own[1] as string) : url;
}

const top = Number(process.env.TOP ?? 25);
for (const file of process.argv.slice(2)) {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const node = byId.get(id);
    if (!node) return;
    const us = profile.timeDeltas[i] ?? 0;
    const key = moduleOf(node);
    if (key === '(idle)') return;
    total += us;
    self.set(key, (self.get(key) ?? 0) + us);
  });
  console.log(`${basename(file)}: ${(total / 1e6).toFixed(1)} s busy`);
  for (const [key, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    console.log(`  ${((100 * us) / total).toFixed(1).padStart(5)}%  ${(us / 1e6).toFixed(2).padStart(6)} s  ${key}`);
  }
}
