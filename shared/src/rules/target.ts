/** Next-hop target: `host[:port]`, port 25 by default. */
export interface Target {
  host: string;
  port: number;
}

export function parseTarget(text: string): Target | null {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+))(?::(\d{1,5}))?$/.exec(text.trim());
  if (!match) return null;
  const host = match[1] ?? match[2] ?? '';
  const portNumber = match[3] === undefined ? 25 : Number(match[3]);
  if (host === '' || portNumber < 1 || portNumber > 65535) return null;
  return { host, port: portNumber };
}

export function formatTarget(target: Target): string {
  return `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
}
