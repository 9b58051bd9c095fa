/**
 * When to try a deferred delivery again: the schedule's step for this attempt, the last step
 * repeating (RETRY_SCHEDULE, default 1m,5m,15m,30m,1h). `attempts` counts the attempts made so far,
 * including the one that just failed.
 */
export function nextAttemptAt(attempts: number, schedule: readonly number[], now: number): number {
  const step = schedule[Math.min(Math.max(attempts, 1), schedule.length) - 1] ?? 60_000;
  return now + step;
}
