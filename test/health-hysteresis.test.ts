import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { applyProbe, initialState, nextProbeDelay } from '../shared/src/rules/hysteresis.ts';
import type { TargetState, Thresholds } from '../shared/src/rules/hysteresis.ts';
import type { ProbeResult } from '../shared/src/rules/hysteresis.ts';

const OK: ProbeResult = { ok: true, latencyMs: 12, greeting: '220 primary ESMTP' };
const FAIL: ProbeResult = { ok: false, latencyMs: 300, error: 'timeout after 300 ms waiting for greeting' };
const T0 = 1_700_000_000_000;

/** Applies a sequence ('s' success, 'f' failure), one probe per second; returns the states and transitions. */
function run(
  sequence: string,
  thresholds: Thresholds,
  start: TargetState = initialState(T0),
): { state: TargetState; transitions: Array<'up' | 'down' | null> } {
  let state = start;
  const transitions: Array<'up' | 'down' | null> = [];
  [...sequence].forEach((c, i) => {
    const { next, transition } = applyProbe(state, c === 's' ? OK : FAIL, T0 + (i + 1) * 1000, thresholds);
    state = next;
    transitions.push(transition);
  });
  return { state, transitions };
}

describe('health hysteresis', () => {
  const t = { failures: 3, successes: 2 };

  it('starts unknown with zeroed counters', () => {
    assert.deepEqual(initialState(T0), {
      state: 'unknown',
      consecutiveSuccesses: 0,
      consecutiveFailures: 0,
      since: T0,
      lastProbeAt: null,
      lastError: null,
      lastLatencyMs: null,
    });
  });

  it('unknown -> up after `successes` consecutive successes, reported once', () => {
    const { state, transitions } = run('sss', t);
    assert.deepEqual(transitions, [null, 'up', null]);
    assert.equal(state.state, 'up');
    assert.equal(state.since, T0 + 2000);
    assert.equal(state.consecutiveSuccesses, 3);
    assert.equal(state.consecutiveFailures, 0);
    assert.equal(state.lastProbeAt, T0 + 3000);
    assert.equal(state.lastError, null);
    assert.equal(state.lastLatencyMs, 12);
  });

  it('unknown -> down after `failures` consecutive failures, reported once', () => {
    const { state, transitions } = run('ffff', t);
    assert.deepEqual(transitions, [null, null, 'down', null]);
    assert.equal(state.state, 'down');
    assert.equal(state.since, T0 + 3000);
    assert.equal(state.consecutiveFailures, 4);
    assert.equal(state.consecutiveSuccesses, 0);
    assert.equal(state.lastError, FAIL.error);
    assert.equal(state.lastLatencyMs, 300);
  });

  it('from unknown the first threshold reached decides', () => {
    assert.deepEqual(run('ffss', t).transitions, [null, null, null, 'up']);
    assert.deepEqual(run('sfff', t).transitions, [null, null, null, 'down']);
  });

  it('up -> down -> up, each transition reported once', () => {
    const { state, transitions } = run('ssfffss', t);
    assert.deepEqual(transitions, [null, 'up', null, null, 'down', null, 'up']);
    assert.equal(state.state, 'up');
    assert.equal(state.since, T0 + 7000);
  });

  it('flapping below the thresholds never transitions out of up', () => {
    const up = run('ss', t).state;
    const { state, transitions } = run('ffsffsffsff', t, up);
    assert.deepEqual(transitions, Array(11).fill(null));
    assert.equal(state.state, 'up');
    assert.equal(state.since, up.since);
    assert.equal(state.consecutiveFailures, 2);
  });

  it('flapping below the thresholds never transitions out of down', () => {
    const down = run('fff', t).state;
    const { state, transitions } = run('sfsfsfsf', t, down);
    assert.deepEqual(transitions, Array(8).fill(null));
    assert.equal(state.state, 'down');
    assert.equal(state.since, down.since);
  });

  it('flapping from unknown stays unknown', () => {
    const { state, transitions } = run('sfsffsffsf', t);
    assert.deepEqual(transitions, Array(10).fill(null));
    assert.equal(state.state, 'unknown');
    assert.equal(state.since, T0);
  });

  it('counters reset on the opposite result', () => {
    const a = run('sss', t).state;
    assert.deepEqual([a.consecutiveSuccesses, a.consecutiveFailures], [3, 0]);
    const b = run('f', t, a).state;
    assert.deepEqual([b.consecutiveSuccesses, b.consecutiveFailures], [0, 1]);
    const c = run('ff', t, b).state;
    assert.deepEqual([c.consecutiveSuccesses, c.consecutiveFailures], [0, 3]);
    const d = run('s', t, c).state;
    assert.deepEqual([d.consecutiveSuccesses, d.consecutiveFailures], [1, 0]);
    assert.equal(d.lastError, null);
  });

  it('thresholds of 1 follow every change of result', () => {
    const { state, transitions } = run('sfssffs', { failures: 1, successes: 1 });
    assert.deepEqual(transitions, ['up', 'down', 'up', null, 'down', null, 'up']);
    assert.equal(state.state, 'up');
    assert.equal(state.since, T0 + 7000);
    assert.deepEqual(run('f', { failures: 1, successes: 1 }).transitions, ['down']);
  });

  it('does not mutate the previous state', () => {
    const prev = initialState(T0);
    const copy = structuredClone(prev);
    applyProbe(prev, FAIL, T0 + 1, t);
    assert.deepEqual(prev, copy);
  });
});

describe('health probe interval', () => {
  const intervals = { up: 10_000, down: 1_000 };
  const t = { failures: 3, successes: 2 };

  it('probes at the short interval while unknown or down, and while successes accumulate', () => {
    assert.equal(nextProbeDelay(initialState(T0), intervals), 1_000);
    assert.equal(nextProbeDelay(run('fff', t).state, intervals), 1_000);
    assert.equal(nextProbeDelay(run('fffs', t).state, intervals), 1_000, 'one success after down: still down, still fast');
  });

  it('probes at PROBE_INTERVAL once up, failures or not', () => {
    assert.equal(nextProbeDelay(run('ss', t).state, intervals), 10_000);
    assert.equal(nextProbeDelay(run('ssff', t).state, intervals), 10_000);
  });

  it('never slower while down than while up', () => {
    assert.equal(nextProbeDelay(initialState(T0), { up: 500, down: 1_000 }), 500);
  });
});
