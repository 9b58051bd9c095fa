/** Lower-case a domain and drop one trailing dot. */
export function normalizeDomain(domain: string): string {
  const lower = domain.trim().toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

/** Split a mailbox at its last '@' (quoted local parts may hold '@'). Null when there is no domain. */
export function splitAddress(address: string): { local: string; domain: string } | null {
  const at = address.lastIndexOf('@');
  if (at <= 0 || at === address.length - 1) return null;
  return { local: address.slice(0, at), domain: normalizeDomain(address.slice(at + 1)) };
}
