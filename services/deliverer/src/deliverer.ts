import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import { Resolver } from 'node:dns/promises';
import { ROOT_CONTEXT, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import type { Broker, EventKey, EventPayload, FlushEvent, PrimaryEvent, SpooledEvent } from '@backupmx/shared/broker/broker.ts';
import { formatTarget, type Config } from '@backupmx/shared/runtime/config.ts';
import type { Logger } from '@backupmx/shared/runtime/logger.ts';
import { bodyReleased } from '@backupmx/shared/runtime/young-gc.ts';
import { createReporter } from '@backupmx/shared/mail/reports.ts';
import { configuredRoutes, mxDomainOf, routeTargets } from '@backupmx/shared/rules/routing.ts';
import type { Store } from '@backupmx/shared/store/store.ts';
import type { ClaimedMessage, MessageInfo, Outcome } from '@backupmx/shared/types.ts';
import { recordAttempt } from './attempt-telemetry.ts';
import { createLeaseKeeper, type HeldLease } from './leases.ts';
import { planMx, selfFrom, type MxResolver } from './mx.ts';
import { createMtaSts, type AppliedPolicy, type StsResolver } from './mta-sts.ts';
import { resolveTargets, type HostLookup } from './next-hop.ts';
import { stsHops, stsTestingRefusal } from '../../../shared/src/rules/mta-sts.ts';
import { domainRequirement, recipientsRequirement, strictest, verified, type TlsRequirement } from '../../../shared/src/rules/next-hop-tls.ts';
import { toOutcomes, verdicts } from '../../../shared/src/rules/outcomes.ts';
import { reportEntries } from './report-entries.ts';
import { nextAttemptAt } from '../../../shared/src/rules/retry.ts';
import { createSmtpClient, type Attempt, type Hop, type HopTls, type OutgoingMessage } from './smtp-client.ts';

const tracer = trace.getTracer('backupmx-deliverer');

/** How often due retries and expired leases are looked for. */
export const TICK_MS = 2000;

type TargetState = { state: PrimaryEvent['state']; at: number };

/** Seams for MX routing and MTA-STS (tests use a fake resolver, their own ports and CA). */
export interface DelivererOptions {
  /** node:dns/promises Resolver-like (MX, A, AAAA, TXT); default: the system's resolvers. */
  resolver?: MxResolver & StsResolver;
  /** Port of MX hosts (RFC 5321: 25). */
  mxPort?: number;
  /** Port of MTA-STS policy hosts (443). */
  mtaStsPort?: number;
  /** CAs standing in for the system's: MTA-STS policy hosts, and next hops verified without PRIMARY_TLS_CA. */
  systemCa?: string[];
  /** This host's addresses, for spotting ourselves among MX hosts; default: every interface's. */
  localAddresses?: string[];
  /** Order of MX hosts of equal preference; default Math.random. */
  random?: () => number;
  /** Addresses of a host-list route's names, asked at every attempt; default: the system resolver. */
  lookup?: HostLookup;
}

type Plan = { hops: Hop[]; tls: HopTls; sts: AppliedPolicy | null } | { defer: string } | { fail: string };

/** How TLS went, for the delivery log lines: `TLSv1.3 verified`, `TLSv1.3 not verified`, `none`. */
function tlsSummary(attempt: Attempt): string | null {
  if (!attempt.tls) return null;
  return attempt.tls.secured ? `${attempt.tls.protocol ?? 'TLS'} ${verified(attempt.tls) ? 'verified' : 'not verified'}` : 'none';
}

/** The envelope to relay: sender, recipients with their RFC 3461 parameters, RET, ENVID, size, body type. */
function outgoing(message: MessageInfo, recipients: readonly string[]): OutgoingMessage {
  const { envelope } = message;
  const params = envelope.dsn ?? {};
  return {
    from: message.mailFrom,
    recipients: recipients.map((address) => {
      const own = params[address] ?? Object.entries(params).find(([key]) => key.toLowerCase() === address.toLowerCase())?.[1];
      return { address, ...(own?.notify ? { notify: own.notify } : {}), ...(own?.orcpt ? { orcpt: own.orcpt } : {}) };
    }),
    ...(envelope.ret ? { ret: envelope.ret } : {}),
    ...(envelope.envid ? { envid: envelope.envid } : {}),
    size: message.size,
    ...(envelope.body8bit ? { body8bit: true } : {}),
  };
}

/**
 * Hands the spool to the next hop. Keeps each target's state from health events (no news, or news
 * older than three probe intervals, counts as up). Per route one drain runs at a time:
 * - flush (primary.up, queue.flush): every queued delivery once, ignoring backoff;
 * - due (mail.spooled while up, and every TICK_MS): deliveries whose retry time has come, and
 *   those whose lease has expired (a crashed deliverer's work).
 * A drain stops early when the route stops answering, so a dead primary is not hammered.
 */
export function createDeliverer(config: Config, store: Store, broker: Broker, log: Logger, options: DelivererOptions = {}) {
  const owner = `${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  const client = createSmtpClient({ name: config.SMTP_HOSTNAME, maxConnections: config.DELIVERY_CONCURRENCY, ...(options.systemCa ? { systemCa: options.systemCa } : {}) });
  const reporter = createReporter(config, store, broker, log);
  const resolver = options.resolver ?? new Resolver({ timeout: 5000, tries: 2 });
  const mtaSts = config.MTA_STS
    ? createMtaSts({ resolver, store, log, ...(options.mtaStsPort ? { port: options.mtaStsPort } : {}), ...(options.systemCa ? { ca: options.systemCa } : {}) })
    : null;
  const self = selfFrom(config.SMTP_HOSTNAME, config.SELF_NAMES, options.localAddresses);
  const targets = new Map<string, TargetState>();
  const workers = new Map<string, { running: Promise<void> | null; pending: { flush: boolean } | null }>();
  const staleAfter = 3 * config.PROBE_INTERVAL + config.PROBE_TIMEOUT;
  const leases = createLeaseKeeper(store, config.DELIVERY_LEASE, log);
  /** Each claim call leases under a fresh owner: its fencing token (store.ts ClaimOptions.owner). */
  let claimCalls = 0;
  let stopping = false;
  let ticker: NodeJS.Timeout | null = null;

  /** Every target of the route is known down (an `mx:` route has no probed targets: never down). */
  function routeDown(route: string, now = Date.now()): boolean {
    const list = routeTargets(route);
    return list.length > 0 && list.every((target) => {
      const known = targets.get(formatTarget(target));
      return known !== undefined && known.state === 'down' && now - known.at < staleAfter;
    });
  }

  function kick(route: string, flush: boolean): void {
    if (stopping) return;
    let worker = workers.get(route);
    if (!worker) workers.set(route, (worker = { running: null, pending: null }));
    worker.pending = { flush: flush || (worker.pending?.flush ?? false) };
    if (worker.running) return;
    const current = worker;
    current.running = (async () => {
      while (current.pending && !stopping) {
        const { flush: flushing } = current.pending;
        current.pending = null;
        await drain(route, flushing).catch((error: unknown) => log.error({ err: error, route }, 'delivery run failed'));
      }
    })().finally(() => {
      current.running = null;
    });
  }

  /**
   * One delivery run for a route: a pipeline, not waves. Up to eight times DELIVERY_CONCURRENCY
   * attempts are in hand (waiting for one of the route's connections), topped up by one claim when
   * half have finished, so the connections never sit idle behind the slowest of a batch or behind
   * the next claim, and a claim (one store transaction that reads the route's backlog in order)
   * leases many deliveries at once. The run ends when a claim finds nothing more; an unreachable
   * next hop stops the claiming and what is in hand finishes.
   */
  async function drain(route: string, flush: boolean): Promise<void> {
    const started = Date.now();
    const inHand = config.DELIVERY_CONCURRENCY * 8;
    const running = new Set<Promise<void>>();
    let delivered = 0;
    let unreachable = false;
    let empty = false;
    while (!stopping && !unreachable && !empty) {
      if (running.size <= inHand / 2) {
        const leaseOwner = `${owner}#${(claimCalls += 1)}`;
        const claimedAt = Date.now();
        const limit = inHand - running.size;
        const claims = await store.claim({
          route,
          now: claimedAt,
          leaseMs: config.DELIVERY_LEASE,
          owner: leaseOwner,
          limit,
          ...(flush ? { ignoreSchedule: true, notAttemptedSince: started } : {}),
        });
        empty = claims.length < limit; // the backlog is in hand: this run ends when it is done
        for (const claim of claims) {
          // Held (and renewed by the lease keeper) from the claim on, also while waiting for a connection.
          const lease = leases.hold(claim.message.id, leaseOwner, claimedAt + config.DELIVERY_LEASE);
          const attempt: Promise<void> = deliver(claim, lease).then((result) => {
            running.delete(attempt);
            if (result === 'answered') delivered += 1;
            else if (result === 'unreachable') unreachable = true;
          });
          running.add(attempt);
        }
      }
      if (running.size > inHand / 2) await Promise.race(running);
    }
    await Promise.all(running);
    if (unreachable) log.warn({ route }, 'next hop unreachable; stopping this delivery run');
    if (flush || delivered > 0) log.info({ route, flush, messages: delivered, ms: Date.now() - started }, 'delivery run finished');
  }

  /**
   * Where a route's mail goes now and what its TLS must be: its hosts' addresses as they resolve
   * now, or its domain's MX hosts (or why not now); PRIMARY_TLS of the recipients' domains; for an MX route, the domain's
   * MTA-STS policy: in enforce mode only the MX hosts it names, over verified TLS; in testing mode
   * the same checks, for the log only.
   */
  async function planOf(route: string, recipients: readonly string[]): Promise<Plan> {
    const own = recipientsRequirement(config, recipients);
    const domain = mxDomainOf(route);
    if (domain === null) {
      const resolved = await resolveTargets(routeTargets(route), options.lookup);
      return 'hops' in resolved ? { hops: resolved.hops, tls: { requirement: own }, sts: null } : resolved;
    }
    const [mx, sts] = await Promise.all([
      planMx(domain, { resolver, self, port: options.mxPort ?? 25, ...(options.random ? { random: options.random } : {}) }),
      mtaSts?.policyFor(domain) ?? null,
    ]);
    if (!('hops' in mx)) return mx;
    if (!sts) return { hops: mx.hops, tls: { requirement: own }, sts: null };
    // RFC 8461 4.2: a certificate chaining to a trusted root (PRIMARY_TLS_CA for a domain we back up that names one) for the MX host name.
    const stsRequirement: TlsRequirement = { level: 'verify', trust: domainRequirement(config, domain).trust, pins: [] };
    const { policy } = sts;
    if (policy.mode === 'testing') return { hops: mx.hops, tls: { requirement: own, audit: stsRequirement }, sts };
    const allowed = stsHops(policy, domain, mx.hops);
    if ('defer' in allowed || allowed.skipped.length) {
      log.warn({ domain, policyId: policy.id, skipped: 'defer' in allowed ? mx.hops.map((hop) => hop.name) : allowed.skipped, policyMx: policy.mx }, 'MTA-STS: MX hosts not in the policy skipped');
    }
    if ('defer' in allowed) return allowed;
    return { hops: allowed.hops, tls: { requirement: strictest([own, stsRequirement]) }, sts };
  }

  /**
   * One attempt under `lease`, renewed by the lease keeper while it runs. 'lost': the lease was lost
   * and the attempt stopped before the end of the message; nothing is recorded, and the delivery
   * is claimable again (at once) when the lease ends.
   */
  async function deliver(claim: ClaimedMessage, lease: HeldLease): Promise<'answered' | 'unreachable' | 'lost'> {
    const { message } = claim;
    const recipients = claim.deliveries.map((delivery) => delivery.recipient);
    const attempts = new Map(claim.deliveries.map((delivery) => [delivery.recipient, delivery.attempts + 1]));
    // A child of the message's own trace (stored by the spool), whatever started this run.
    const parent = propagation.extract(ROOT_CONTEXT, message.trace ?? {});
    return tracer.startActiveSpan('smtp.deliver', { attributes: { 'backupmx.queue_id': message.id, 'backupmx.recipients': recipients.length, 'backupmx.route': claim.route } }, parent, async (span) => {
      try {
        const plan = await planOf(claim.route, recipients);
        // No hop to try (DNS, MTA-STS): a deferral (4.4.x, 4.7.5), or a failure for a domain that takes no mail.
        const attempt: Attempt =
          'hops' in plan
            ? await client.send(plan.hops, outgoing(message, recipients), () => store.readBody(message.id), plan.tls, lease.abort.signal)
            : 'fail' in plan
              ? { target: '', error: { message: plan.fail, response: plan.fail, responseCode: Number(plan.fail.slice(0, 3)) }, remoteMta: null, dsn: false }
              : { target: '', error: { message: plan.defer }, remoteMta: null, dsn: false };
        if ('hops' in plan) bodyReleased(message.size); // a large body's parts, read and sent: freed now, not when V8's heap next fills
        if (lease.lost && 'error' in attempt && attempt.error.responseCode === undefined) {
          log.warn({ queueId: message.id, reason: lease.lost }, 'attempt stopped: its lease was lost; the delivery returns to the queue when the lease ends');
          return 'lost';
        }
        const now = Date.now();
        const list = verdicts(recipients, attempt);
        const retryAt = (recipient: string) => nextAttemptAt(attempts.get(recipient) ?? 1, config.RETRY_SCHEDULE, now);
        let outcomes: Outcome[] = toOutcomes(list, retryAt, attempt.target || null);
        // Reports go out before the outcome is recorded (the body is dropped with the last delivery).
        const entries = reportEntries(list, attempt, now);
        if (entries.length > 0) {
          try {
            await reporter.report(message, entries, 'attempt');
          } catch (error) {
            log.warn({ err: error, queueId: message.id }, 'delivery report could not be queued; its failed recipients stay queued');
            outcomes = outcomes.map((outcome) => (outcome.result === 'failed' ? { ...outcome, result: 'deferred', nextAttemptAt: retryAt(outcome.recipient) } : outcome));
          }
        }
        // Fenced: changes nothing when the lease went to another claim meanwhile.
        await store.settle(message.id, lease.owner, outcomes, now);
        recordAttempt(span, claim.route, attempt, list);
        if ('hops' in plan && plan.sts && plan.tls.audit && attempt.remoteMta) {
          const reason = stsTestingRefusal(plan.sts.policy, attempt.remoteMta, attempt.target, attempt.tls ?? null, plan.tls.audit);
          if (reason) log.warn({ queueId: message.id, domain: mxDomainOf(claim.route), policyId: plan.sts.policy.id, relay: attempt.target, reason }, 'MTA-STS testing: enforce mode would have refused this delivery');
        }
        const tls = tlsSummary(attempt);
        for (const verdict of list) {
          const fields = { queueId: message.id, to: verdict.recipient, relay: attempt.target || null, ...(tls ? { tls } : {}), result: verdict.result, reply: verdict.reply };
          if (verdict.result === 'delivered') log.info(fields, 'delivered');
          else log.warn(fields, verdict.result === 'failed' ? 'delivery failed' : 'delivery deferred');
        }
        const unanswered = 'error' in attempt && attempt.error.responseCode === undefined;
        if (unanswered) span.setStatus({ code: SpanStatusCode.ERROR, message: attempt.error.message });
        return unanswered ? 'unreachable' : 'answered';
      } catch (error) {
        span.recordException(error as Error);
        if (lease.lost) return 'lost';
        log.error({ err: error, queueId: message.id }, 'delivery attempt could not be recorded; the lease will return it');
        return 'unreachable';
      } finally {
        leases.release(lease);
        span.end();
      }
    });
  }

  function onEvent(key: EventKey, payload: EventPayload): void {
    if (key === 'primary.up' || key === 'primary.down' || key === 'primary.status') {
      const event = payload as PrimaryEvent;
      const previous = targets.get(event.target)?.state;
      targets.set(event.target, { state: event.state, at: Date.now() });
      if (event.state === 'up' && (key === 'primary.up' || previous === 'down')) {
        log.info({ target: event.target }, 'primary is up; flushing');
        for (const route of knownRoutes) if (route.split(',').includes(event.target)) kick(route, true);
      }
    } else if (key === 'mail.spooled') {
      for (const route of (payload as SpooledEvent).routes) {
        knownRoutes.add(route);
        if (!routeDown(route)) kick(route, false);
      }
    } else if (key === 'queue.flush') {
      const { route } = payload as FlushEvent;
      for (const known of knownRoutes) if (route === undefined || route === known) kick(known, true);
    }
  }

  const knownRoutes = new Set(configuredRoutes(config));

  return {
    owner,
    async start(): Promise<void> {
      await broker.subscribe(['primary.up', 'primary.down', 'primary.status', 'mail.spooled', 'queue.flush'], onEvent);
      const tick = async () => {
        try {
          for (const route of await store.routes()) knownRoutes.add(route);
        } catch (error) {
          log.warn({ err: error }, 'store not answering');
        }
        for (const route of knownRoutes) if (!routeDown(route)) kick(route, false);
      };
      leases.start();
      ticker = setInterval(() => void tick(), TICK_MS);
      void tick();
    },
    /** For /status: what this deliverer believes of each target. */
    targets: () => Object.fromEntries(targets),
    async stop(): Promise<void> {
      stopping = true;
      if (ticker) clearInterval(ticker);
      await Promise.allSettled([...workers.values()].map((worker) => worker.running));
      // Renewals go on until the last attempt has settled.
      await leases.stop();
      client.close();
    },
  };
}
