import type { Broker } from '@backupmx/shared/broker/broker.ts';
import type { Config } from '@backupmx/shared/runtime/config.ts';
import { parseTarget } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { primaryTlsExpiry, primaryTlsOffered, primaryTlsVerified, primaryTransitions, primaryUp, probeDuration } from '@backupmx/shared/runtime/metrics.ts';
import { trustAnchors } from '@backupmx/shared/mail/peer-tls.ts';
import { configuredTargets, mxDomainOf, routeForRecipient } from '@backupmx/shared/rules/routing.ts';
import { domainRequirement, OPPORTUNISTIC, strictest, tlsStatus, type TlsRequirement, type TlsStatus } from '@backupmx/shared/rules/next-hop-tls.ts';
import { applyProbe, initialState, nextProbeDelay, type TargetState } from '../../../shared/src/rules/hysteresis.ts';
import { probeSmtp } from './probe.ts';

/** Seams for tests. */
export interface MonitorOptions {
  /** CAs standing in for the system's. */
  systemCa?: string[];
}

/** Per probed target (host:port), what the domains routed to it require together: the trust anchors and pins its probe checks. */
function targetRequirements(config: Config): Map<string, TlsRequirement> {
  const byTarget = new Map<string, TlsRequirement[]>();
  for (const domain of new Set([...config.RELAY_DOMAINS, ...Object.keys(config.domains)])) {
    const route = routeForRecipient(`postmaster@${domain}`, config);
    if (mxDomainOf(route) !== null) continue;
    // A host-list route is its targets, written canonically (host:port), joined by commas.
    for (const target of route.split(',')) byTarget.set(target, [...(byTarget.get(target) ?? []), domainRequirement(config, domain)]);
  }
  return new Map([...byTarget].map(([target, list]) => [target, strictest(list)]));
}

/**
 * Probes every distinct next-hop target every PROBE_INTERVAL while it is up, every
 * PROBE_INTERVAL_DOWN while it is down or unknown (connect, 220, EHLO, STARTTLS when offered, QUIT
 * within PROBE_TIMEOUT); publishes primary.up / primary.down on transitions and primary.status for
 * the target after every probe. Each target's certificate is checked against
 * what the domains routed to it configure (PRIMARY_TLS_CA, PRIMARY_TLS_PIN), whatever their
 * PRIMARY_TLS, so an operator sees a certificate that would not verify before requiring it.
 */
export function createMonitor(config: Config, broker: Broker, log: Logger, options: MonitorOptions = {}) {
  const states = new Map<string, TargetState>(configuredTargets(config).map((target) => [target, initialState(Date.now())]));
  const requirements = targetRequirements(config);
  const tlsStates = new Map<string, TlsStatus>();
  const thresholds = { failures: config.PROBE_FAILURES, successes: config.PROBE_SUCCESSES };
  const intervals = { up: config.PROBE_INTERVAL, down: config.PROBE_INTERVAL_DOWN };
  const timers = new Map<string, NodeJS.Timeout>();
  const rounds = new Map<string, Promise<void>>();
  let stopping = false;

  async function probe(target: string): Promise<void> {
    const address = parseTarget(target);
    if (!address) return;
    const requirement = requirements.get(target) ?? OPPORTUNISTIC;
    const result = await probeSmtp(address, { timeoutMs: config.PROBE_TIMEOUT, heloName: config.SMTP_HOSTNAME, ca: trustAnchors(requirement.trust, options.systemCa) });
    let tls: TlsStatus | null = null;
    if (result.ok && result.tls) {
      tls = tlsStatus(result.tls, requirement, target);
      const before = tlsStates.get(target);
      if (before && before.verified !== tls.verified) log[tls.verified ? 'info' : 'warn']({ target, problem: tls.problem }, tls.verified ? 'primary TLS verified' : 'primary TLS no longer verified');
      tlsStates.set(target, tls);
      primaryTlsOffered.set({ target }, tls.offered ? 1 : 0);
      primaryTlsVerified.set({ target }, tls.verified ? 1 : 0);
      if (tls.certificate?.notAfter) primaryTlsExpiry.set({ target }, tls.certificate.notAfter / 1000);
      else primaryTlsExpiry.remove({ target });
    }
    const previous = states.get(target) ?? initialState(Date.now());
    const { next, transition } = applyProbe(previous, result, Date.now(), thresholds);
    states.set(target, next);
    probeDuration.observe({ target, result: result.ok ? 'ok' : 'fail' }, result.latencyMs / 1000);
    if (next.state !== 'unknown') primaryUp.set({ target }, next.state === 'up' ? 1 : 0);
    if (transition) primaryTransitions.inc({ target, state: transition });
    const event = { target, state: next.state, since: next.since, lastError: next.lastError, latencyMs: next.lastLatencyMs, ...(tls ? { tls } : {}) };
    if (transition) {
      log[transition === 'up' ? 'info' : 'warn']({ target, error: next.lastError }, `primary ${transition}`);
      broker.publishEvent(transition === 'up' ? 'primary.up' : 'primary.down', event);
    }
    broker.publishEvent('primary.status', event);
  }

  /** Each target on its own clock: PROBE_INTERVAL while up, PROBE_INTERVAL_DOWN while down or unknown. */
  function schedule(target: string, delay: number): void {
    if (stopping) return;
    timers.set(target, setTimeout(() => {
      const started = Date.now();
      const running = probe(target).catch((error: unknown) => log.error({ err: error, target }, 'probe failed'));
      rounds.set(target, running);
      void running.finally(() => {
        const state = states.get(target) ?? initialState(Date.now());
        schedule(target, Math.max(0, nextProbeDelay(state, intervals) - (Date.now() - started)));
      });
    }, delay));
  }

  return {
    start(): void {
      for (const target of states.keys()) schedule(target, 0);
    },
    /** Each target's state and the TLS its last probe that reached EHLO saw (null before one did). */
    status(): Record<string, TargetState & { tls: TlsStatus | null }> {
      return Object.fromEntries([...states].map(([target, state]) => [target, { ...state, tls: tlsStates.get(target) ?? null }]));
    },
    async stop(): Promise<void> {
      stopping = true;
      for (const timer of timers.values()) clearTimeout(timer);
      await Promise.all(rounds.values());
    },
  };
}
