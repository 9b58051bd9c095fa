/**
 * Starts the OpenTelemetry SDK, once, when the standard OTEL_* variables name an OTLP endpoint
 * (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Otherwise nothing is loaded
 * and every span of `@opentelemetry/api` is a no-op.
 *
 * Import it first in every entry point (`import './telemetry.ts'`): it runs before
 * amqplib, mongodb and express are evaluated, so their instrumentations apply. The SDK is loaded
 * synchronously (a top-level await would let the modules after this one run first).
 *
 * Exporter, protocol (http/protobuf by default, http/json, grpc), sampler, resource attributes and
 * batching come from the standard variables. The service name defaults to backupmx-<service>.
 * Spans of the `backupmx.events` exchange (primary.status every probe interval, mail.spooled hints)
 * are not recorded: they are noise beside the trace of a message.
 */
import { createRequire } from 'node:module';
import type { tracing } from '@opentelemetry/sdk-node';
import { TOPOLOGY } from '../broker/broker.ts';

type Env = Record<string, string | undefined>;
type Sampler = tracing.Sampler;
type SamplingResult = tracing.SamplingResult;

/** Tracing is on when an OTLP endpoint is configured and the SDK is not disabled. */
export function telemetryEnabled(env: Env): boolean {
  if (/^true$/i.test(env.OTEL_SDK_DISABLED?.trim() ?? '')) return false;
  const exporters = (env.OTEL_TRACES_EXPORTER ?? '').split(',').map((name) => name.trim());
  if (exporters.length === 1 && exporters[0] === 'none') return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

/** backupmx-<service> for services/<service>/src/main.ts, backupmx for the single-process entry. */
export function serviceName(entry: string | undefined): string {
  const match = /services[\\/]([\w-]+)[\\/]src[\\/]main\.ts$/.exec(entry ?? '');
  return match ? `backupmx-${match[1]}` : 'backupmx';
}

let flush: (() => Promise<void>) | null = null;

/** Export the spans still buffered (called on shutdown); a no-op when tracing is off. */
export function flushTelemetry(): Promise<void> {
  return flush ? flush().catch(() => {}) : Promise.resolve();
}

function start(env: Env): void {
  const require = createRequire(import.meta.url);
  const sdk = require('@opentelemetry/sdk-node') as typeof import('@opentelemetry/sdk-node');
  const { AmqplibInstrumentation } = require('@opentelemetry/instrumentation-amqplib') as typeof import('@opentelemetry/instrumentation-amqplib');
  const { MongoDBInstrumentation } = require('@opentelemetry/instrumentation-mongodb') as typeof import('@opentelemetry/instrumentation-mongodb');
  const { HttpInstrumentation } = require('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http');
  const { ExpressInstrumentation } = require('@opentelemetry/instrumentation-express') as typeof import('@opentelemetry/instrumentation-express');
  const { tracing } = sdk;

  const ratio = Number(env.OTEL_TRACES_SAMPLER_ARG ?? 1);
  const rooted = (root: Sampler) => new tracing.ParentBasedSampler({ root });
  const base: Sampler =
    {
      always_on: new tracing.AlwaysOnSampler(),
      always_off: new tracing.AlwaysOffSampler(),
      parentbased_always_off: rooted(new tracing.AlwaysOffSampler()),
      traceidratio: new tracing.TraceIdRatioBasedSampler(ratio),
      parentbased_traceidratio: rooted(new tracing.TraceIdRatioBasedSampler(ratio)),
    }[env.OTEL_TRACES_SAMPLER ?? ''] ?? rooted(new tracing.AlwaysOnSampler());
  const sampler: Sampler = {
    shouldSample(context, traceId, name, kind, attributes, links): SamplingResult {
      if (attributes['messaging.destination'] === TOPOLOGY.eventsExchange) return { decision: tracing.SamplingDecision.NOT_RECORD };
      return base.shouldSample(context, traceId, name, kind, attributes, links);
    },
    toString: () => `BackupmxSampler{${base.toString()}}`,
  };

  const quiet = new Set(['/healthz', '/readyz', '/metrics']);
  const nodeSdk = new sdk.NodeSDK({
    ...(env.OTEL_SERVICE_NAME || /(^|,)\s*service\.name=/.test(env.OTEL_RESOURCE_ATTRIBUTES ?? '') ? {} : { serviceName: serviceName(process.argv[1]) }),
    sampler,
    // Metrics are Prometheus' (GET /metrics) and logs go to stdout, unless asked for explicitly.
    ...(env.OTEL_METRICS_EXPORTER ? {} : { metricReaders: [] }),
    ...(env.OTEL_LOGS_EXPORTER ? {} : { logRecordProcessors: [] }),
    instrumentations: [
      // The RabbitMQ publish (until its confirm) and the spool's consume, in the message's trace.
      new AmqplibInstrumentation(),
      // Store operations inside a message's spans (MONGODB_URL); never root spans of their own.
      new MongoDBInstrumentation({ requireParentSpan: true }),
      // Admin API requests; probes and scrapes are not traced, outgoing requests neither.
      new HttpInstrumentation({
        disableOutgoingRequestInstrumentation: true,
        ignoreIncomingRequestHook: (request) => quiet.has((request.url ?? '').split('?')[0] ?? ''),
      }),
      new ExpressInstrumentation(),
    ],
  });
  nodeSdk.start();
  // Express is imported (not required) by the app, which require-in-the-middle does not see: load
  // it here first so the instrumentation patches the one module instance the app then gets.
  require('express');
  flush = () => nodeSdk.shutdown();
}

if (telemetryEnabled(process.env)) start(process.env);
