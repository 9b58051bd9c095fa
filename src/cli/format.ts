/** Text views of the admin API's JSON for the `backupmx` command. Pure functions. */
import { formatDuration } from '@backupmx/shared/rules/duration.ts';

export interface DeliveryView {
  recipient: string;
  route: string;
  state: string;
  attempts: number;
  nextAttemptAt: string | null;
  lastReply: string | null;
  lastNextHop?: string | null;
}

export interface MessageView {
  id: string;
  from: string;
  recipients: string[];
  size: number;
  receivedAt: string;
  ageSeconds: number;
  deliveries: DeliveryView[];
}

export interface MessageDetailView extends MessageView {
  traceId?: string | null;
  traceUrl?: string;
  attempts: Array<{ recipient: string; at: string; nextHop: string | null; result: string; reply: string }>;
}

const stamp = (iso: string | null | undefined) => (iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-');
const sender = (from: string) => (from === '' ? '<>' : from);

/** `3h12m`, `45s`, `2d4h`: an age at a glance (shared with the web console). */
export const formatAge = formatDuration;

/**
 * A mailq-like listing: one block per message (queue id, `!` when held as Postfix marks it, size,
 * arrival, age, sender), then each recipient still waiting with the last reply in parentheses.
 */
export function queueTable(page: { total: number; offset: number; items: MessageView[] }): string {
  if (page.total === 0) return 'Mail queue is empty\n';
  const lines = [`${'-Queue ID-'.padEnd(19)} ${'--Size--'.padStart(9)} ${'----Arrival Time----'.padEnd(20)} ${'-Age-'.padEnd(7)} -Sender/Recipient-------`];
  let bytes = 0;
  for (const message of page.items) {
    bytes += message.size;
    const held = message.deliveries.some((delivery) => delivery.state === 'held');
    lines.push(`${`${message.id}${held ? '!' : ''}`.padEnd(19)} ${String(message.size).padStart(9)} ${stamp(message.receivedAt).padEnd(20)} ${formatAge(message.ageSeconds).padEnd(7)} ${sender(message.from)}`);
    const pad = ' '.repeat(19 + 1 + 9 + 1 + 20 + 1 + 7 + 1);
    for (const delivery of message.deliveries) {
      if (delivery.lastReply && delivery.state !== 'delivered') lines.push(`${pad}(${delivery.lastReply})`);
      const note = delivery.state === 'queued' ? '' : ` [${delivery.state}]`;
      lines.push(`${pad}${delivery.recipient}${note}`);
    }
    lines.push('');
  }
  const shown = page.items.length;
  const more = page.total > page.offset + shown ? ` (${shown} shown from ${page.offset + 1}; --offset ${page.offset + shown} for more)` : '';
  lines.push(`-- ${Math.ceil(bytes / 1024)} Kbytes in ${page.total} Request${page.total === 1 ? '' : 's'}.${more}`);
  return `${lines.join('\n')}\n`;
}

/** Everything about one message: envelope, per-recipient state, every attempt, its trace. */
export function messageDetail(message: MessageDetailView): string {
  const lines = [
    `Queue ID:  ${message.id}`,
    `From:      ${sender(message.from)}`,
    `Size:      ${message.size} bytes`,
    `Arrived:   ${stamp(message.receivedAt)} (${formatAge(message.ageSeconds)} ago)`,
  ];
  if (message.traceId) lines.push(`Trace:     ${message.traceUrl ?? message.traceId}`);
  lines.push('', 'Recipients:');
  for (const delivery of message.deliveries) {
    const when = delivery.state === 'queued' && delivery.nextAttemptAt ? `, next attempt ${stamp(delivery.nextAttemptAt)}` : '';
    lines.push(`  ${delivery.recipient}  ${delivery.state}  via ${delivery.route}, ${delivery.attempts} attempt${delivery.attempts === 1 ? '' : 's'}${when}`);
    if (delivery.lastReply) lines.push(`    last reply: ${delivery.lastReply}${delivery.lastNextHop ? ` (from ${delivery.lastNextHop})` : ''}`);
  }
  lines.push('', 'Attempts:');
  if (message.attempts.length === 0) lines.push('  none yet');
  for (const attempt of message.attempts) {
    lines.push(`  ${stamp(attempt.at)}  ${attempt.recipient}  ${attempt.result}${attempt.nextHop ? ` at ${attempt.nextHop}` : ''}: ${attempt.reply}`);
  }
  return `${lines.join('\n')}\n`;
}

export interface StatusView {
  primaries: Record<string, { state: string; since: string | null; lastError: string | null }>;
  spool: { queued: Record<string, number>; held: number; failed: number; delivered: number; messages: number; oldestQueuedAgeSeconds: number | null };
}

/** Primaries and spool depth at a glance. */
export function statusText(status: StatusView): string {
  const lines = ['Primaries:'];
  const targets = Object.entries(status.primaries);
  if (targets.length === 0) lines.push('  no news from the health service yet');
  for (const [target, state] of targets) {
    lines.push(`  ${target.padEnd(28)} ${state.state.toUpperCase().padEnd(8)} since ${stamp(state.since)}${state.lastError ? `  (${state.lastError})` : ''}`);
  }
  const queued = Object.values(status.spool.queued).reduce((sum, count) => sum + count, 0);
  lines.push('', 'Spool:');
  lines.push(`  ${status.spool.messages} message${status.spool.messages === 1 ? '' : 's'} waiting; ${queued} deliveries queued, ${status.spool.held} held, ${status.spool.failed} failed`);
  for (const [route, count] of Object.entries(status.spool.queued)) lines.push(`    ${route.padEnd(28)} ${count} queued`);
  if (status.spool.oldestQueuedAgeSeconds !== null) lines.push(`  oldest queued: ${formatAge(status.spool.oldestQueuedAgeSeconds)}`);
  return `${lines.join('\n')}\n`;
}

export interface DeadView {
  total: number;
  items: Array<{ id: string; envelope: { mailFrom: string; rcptTo: string[] } | null; size: number; deadAt: string | null; reason: string | null }>;
}

export function deadTable(dead: DeadView): string {
  if (dead.total === 0) return 'Dead-letter queue is empty\n';
  const lines = dead.items.map((item) => {
    const envelope = item.envelope ? `${sender(item.envelope.mailFrom)} -> ${item.envelope.rcptTo.join(', ')}` : '(no readable envelope)';
    return `${item.id.padEnd(19)} ${String(item.size).padStart(9)} ${stamp(item.deadAt).padEnd(20)} ${(item.reason ?? '-').padEnd(14)} ${envelope}`;
  });
  return `${lines.join('\n')}\n-- ${dead.total} dead letter${dead.total === 1 ? '' : 's'}; replay one with: backupmx replay ID\n`;
}
