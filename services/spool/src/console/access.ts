/**
 * Who may see what in the web console (pure). The operator (ADMIN_TOKEN, or a loopback client while
 * there is none) sees and does everything. A domain viewer (domains.<domain>.VIEWERS) sees only
 * mail still waiting for a recipient in that domain, and of each message only that domain's
 * recipients, their attempts and DSN parameters; no actions, no other domain, no overview, no dead
 * letters.
 */
import { splitAddress } from '@backupmx/shared/rules/address.ts';
import type { ListFilter, MessageDetail } from '@backupmx/shared/store/store.ts';

export type Principal = { role: 'operator'; user: string } | { role: 'viewer'; user: string; domain: string };

export const isOperator = (principal: Principal): principal is Extract<Principal, { role: 'operator' }> => principal.role === 'operator';

const inDomain = (address: string, domain: string) => splitAddress(address)?.domain === domain;

/** A viewer's list: only what waits (queued or held) for their domain, whatever else was asked. */
export function scopeFilter(principal: Principal, filter: ListFilter): ListFilter {
  if (isOperator(principal)) return filter;
  const { sender, recipient, receivedBefore, order, limit, offset } = filter;
  return {
    ...(sender !== undefined ? { sender } : {}),
    ...(recipient !== undefined ? { recipient } : {}),
    ...(receivedBefore !== undefined ? { receivedBefore } : {}),
    ...(order !== undefined ? { order } : {}),
    ...(limit !== undefined ? { limit } : {}),
    ...(offset !== undefined ? { offset } : {}),
    domain: principal.domain,
    state: ['queued', 'held'],
  };
}

/**
 * The message as this principal may see it, or null when they may not see it at all (a viewer:
 * no recipient of their domain still waiting; delivered mail has no body any more).
 */
export function visibleMessage<T extends Pick<MessageDetail, 'message' | 'deliveries'> & Partial<Pick<MessageDetail, 'attempts'>>>(principal: Principal, detail: T): T | null {
  if (isOperator(principal)) return detail;
  const { domain } = principal;
  const deliveries = detail.deliveries.filter((delivery) => inDomain(delivery.recipient, domain));
  if (!deliveries.some((delivery) => delivery.state === 'queued' || delivery.state === 'held')) return null;
  const mine = (address: string) => inDomain(address, domain);
  const { envelope } = detail.message;
  const dsn = envelope.dsn ? Object.fromEntries(Object.entries(envelope.dsn).filter(([address]) => mine(address))) : undefined;
  return {
    ...detail,
    message: {
      ...detail.message,
      recipients: detail.message.recipients.filter(mine),
      envelope: { ...envelope, rcptTo: envelope.rcptTo.filter(mine), ...(dsn ? { dsn } : {}) },
    },
    deliveries,
    ...(detail.attempts ? { attempts: detail.attempts.filter((attempt) => mine(attempt.recipient)) } : {}),
  };
}
