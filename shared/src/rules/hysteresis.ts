/**
 * Probe hysteresis for one target: a pure function from (state, probe result)
 * to the next state and the transition to announce, if any.
 *
 * - `down` after `failures` consecutive failures, `up` after `successes`
 *   consecutive successes; from `unknown`, whichever threshold is reached first.
 * - A result resets the opposite counter.
 * - A transition is reported only when the state changes.
 */
import type { TlsFacts } from './next-hop-tls.ts';

/** What one SMTP probe of a target found (services/health/src/probe.ts makes it). */
export type ProbeResult =
  | { ok: true; latencyMs: number; greeting: string; tls?: TlsFacts }
  | { ok: false; latencyMs: number; error: string };

export type TargetStatus = 'unknown' | 'up' | 'down';

export interface TargetState {
  state: TargetStatus;
  consecutiveSuccesses: number;
  consecutiveFailures: number;
  /** Epoch ms of the last transition (or of `initialState`). */
  since: number;
  lastProbeAt: number | null;
  /** The most recent probe's error; null when it succeeded. */
  lastError: string | null;
  /** The most recent probe's latency, success or failure. */
  lastLatencyMs: number | null;
}

export interface Thresholds {
  failures: number;
  successes: number;
}

export function initialState(now: number): TargetState {
  return {
    state: 'unknown',
    consecutiveSuccesses: 0,
    consecutiveFailures: 0,
    since: now,
    lastProbeAt: null,
    lastError: null,
    lastLatencyMs: null,
  };
}

export function applyProbe(
  prev: TargetState,
  result: ProbeResult,
  now: number,
  thresholds: Thresholds,
): { next: TargetState; transition: 'up' | 'down' | null } {
  // A threshold below 1 would mean "never"; treat it as 1.
  const needSuccesses = Math.max(1, thresholds.successes);
  const needFailures = Math.max(1, thresholds.failures);

  const consecutiveSuccesses = result.ok ? prev.consecutiveSuccesses + 1 : 0;
  const consecutiveFailures = result.ok ? 0 : prev.consecutiveFailures + 1;

  let state = prev.state;
  if (result.ok && consecutiveSuccesses >= needSuccesses) state = 'up';
  if (!result.ok && consecutiveFailures >= needFailures) state = 'down';

  const transition = state !== prev.state && state !== 'unknown' ? state : null;

  return {
    next: {
      state,
      consecutiveSuccesses,
      consecutiveFailures,
      since: transition ? now : prev.since,
      lastProbeAt: now,
      lastError: result.ok ? null : result.error,
      lastLatencyMs: result.latencyMs,
    },
    transition,
  };
}

export interface Intervals {
  /** While the target is up. */
  up: number;
  /** While it is down or unknown: short, so that a primary that returns is declared up within about successes x this. */
  down: number;
}

/**
 * How long to wait before probing the target again. A target that is not up is probed at the
 * short interval: the PROBE_SUCCESSES consecutive successes that declare it up still apply, so a
 * primary that flaps is not declared up on one success, only sooner after it really returns.
 */
export function nextProbeDelay(state: TargetState, intervals: Intervals): number {
  return state.state === 'up' ? intervals.up : Math.min(intervals.down, intervals.up);
}
