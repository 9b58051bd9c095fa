import { z } from 'zod';
import { parseDuration } from '@backupmx/shared/rules/duration.ts';
import type { ListFilter } from '@backupmx/shared/store/store.ts';
import type { DeliveryState } from '@backupmx/shared/types.ts';

/**
 * The queue filter as people give it, in a query string (GET /api/queue, the console's queue page)
 * or in a JSON body (bulk operations): state, domain, sender, recipient, age, before, sort. One
 * schema for the API and the console, so both answer the same bad input the same way.
 */

export const STATES = ['queued', 'held', 'delivered', 'failed', 'waiting'] as const;
export type StateFilter = (typeof STATES)[number];

/** `waiting`: queued or held, i.e. not delivered yet (what the console's viewers see). */
export function statesOf(state: StateFilter): DeliveryState | DeliveryState[] {
  return state === 'waiting' ? ['queued', 'held'] : state;
}

export const filterFields = {
  state: z.enum(STATES, { error: 'expected queued, held, delivered, failed or waiting' }).optional(),
  domain: z.string().trim().min(1, 'expected a domain').transform((text) => text.toLowerCase().replace(/\.$/, '')).optional(),
  sender: z.string().optional(),
  recipient: z.string().min(1, 'expected part of an address').optional(),
  age: z
    .string()
    .transform((text, context) => {
      const ms = parseDuration(text);
      if (ms === null) context.addIssue({ code: 'custom', message: 'expected a minimum age such as 30s, 5m, 1h or 5d' });
      return ms ?? 0;
    })
    .optional(),
  /** Received at or before this time (ISO 8601): what a confirmed bulk action was counted on. */
  before: z
    .string()
    .transform((text, context) => {
      const ms = /^\d{4}-\d\d-\d\dT/.test(text) ? Date.parse(text) : Number.NaN;
      if (Number.isNaN(ms)) context.addIssue({ code: 'custom', message: 'expected a time such as 2026-12-01T10:00:00Z' });
      return ms;
    })
    .optional(),
  sort: z.enum(['newest', 'oldest'], { error: 'expected newest or oldest' }).optional(),
};

export type FilterInput = { [K in keyof typeof filterFields]?: z.output<(typeof filterFields)[K]> };

/** The store's ListFilter for parsed fields at time `now` (age counts back from now). */
export function listFilterOf(input: FilterInput, now: number): ListFilter {
  const bounds = [input.age === undefined ? undefined : now - input.age, input.before].filter((value): value is number => value !== undefined);
  return {
    ...(input.state ? { state: statesOf(input.state) } : {}),
    ...(input.domain ? { domain: input.domain } : {}),
    ...(input.sender !== undefined && input.sender !== '' ? { sender: input.sender } : {}),
    ...(input.recipient ? { recipient: input.recipient } : {}),
    ...(bounds.length ? { receivedBefore: Math.min(...bounds) } : {}),
    ...(input.sort ? { order: input.sort } : {}),
  };
}

/** The first problem of a failed parse, one line naming the parameter. */
export function firstIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  const key = issue?.path.map(String).join('.') || 'request';
  if (issue?.code === 'unrecognized_keys') return `${issue.path.length ? `${key}: ` : ''}unknown parameter ${issue.keys.join(', ')}`;
  return `${key}: ${issue?.message ?? 'is invalid'}`;
}
