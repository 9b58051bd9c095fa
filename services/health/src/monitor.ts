import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import { parseTarget } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { primaryTransitions, primaryUp, probeDuration } from '@backupmx/shared/runtime/metrics.ts';
import { configuredTargets } from '@backupmx/shared/rules/routing.ts';
import { applyProbe, initialState, type TargetState } from '../../../shared/src/rules/hysteresis.ts';
import { probeSmtp } from './probe.ts';

/**
 * Probes every distinct next-hop target every PROBE_INTERVAL (connect, 220, EHLO, QUIT within
 * PROBE_TIMEOUT); publishes primary.up / primary.down on transitions and primary.status for every
 * target after every round.
 */
export function createMonitor(config: Config, broker: Broker, log: Logger) {
  const states = new Map<string, TargetState>(configuredTargets(config).map((target) => [target, initialState(Date.now())]));
  const thresholds = { failures: config.PROBE_FAILURES, successes: config.PROBE_SUCCESSES };
  let timer: NodeJS.Timeout | null = null;
  let round: Promise<void> | null = null;
  let stopping = false;

  async function probe(target: string): Promise<void> {
    const address = parseTarget(target);
    if (!address) return;
    const result = await probeSmtp(address, { timeoutMs: config.PROBE_TIMEOUT, heloName: config.SMTP_HOSTNAME });
    const previous = states.get(target) ?? initialState(Date.now());
    const { next, transition } = applyProbe(previous, result, Date.now(), thresholds);
    states.set(target, next);
    probeDuration.observe({ target, result: result.ok ? 'ok' : 'fail' }, result.latencyMs / 1000);
    if (next.state !== 'unknown') primaryUp.set({ target }, next.state === 'up' ? 1 : 0);
    if (transition) primaryTransitions.inc({ target, state: transition });
    const event = { target, state: next.state, since: next.since, lastError: next.lastError, latencyMs: next.lastLatencyMs };
    if (transition) {
      log[transition === 'up' ? 'info' : 'warn']({ target, error: next.lastError }, `primary ${transition}`);
      broker.publishEvent(transition === 'up' ? 'primary.up' : 'primary.down', event);
    }
    broker.publishEvent('primary.status', event);
  }

  function schedule(delay: number): void {
    if (stopping) return;
    timer = setTimeout(() => {
      const started = Date.now();
      round = Promise.all([...states.keys()].map(probe)).then(() => undefined);
      void round.finally(() => schedule(Math.max(0, config.PROBE_INTERVAL - (Date.now() - started))));
    }, delay);
  }

  return {
    start(): void {
      schedule(0);
    },
    status(): Record<string, TargetState> {
      return Object.fromEntries(states);
    },
    async stop(): Promise<void> {
      stopping = true;
      if (timer) clearTimeout(timer);
      await round;
    },
  };
}
