import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { registry } from '../shared/src/runtime/metrics.ts';
import { loadCompose } from './support/compose.ts';
import { ROOT } from './support/processes.ts';

/**
 * The Prometheus and Grafana provisioning of the compose stack, checked without running them (no
 * Docker engine here): every metric a dashboard panel queries is one the services export, every
 * data source a panel names is provisioned, and compose mounts the files that exist.
 */
const deploy = (path: string) => join(ROOT, 'deploy', path);
const dashboard = JSON.parse(readFileSync(deploy('grafana/dashboards/backupmx.json'), 'utf8')) as {
  uid: string;
  panels: Array<{ title: string; datasource: { uid: string }; targets: Array<{ expr?: string; datasource: { uid: string }; tags?: string }> }>;
  templating: { list: Array<{ name: string }> };
};

describe('Grafana dashboard and Prometheus configuration (deploy/)', () => {
  it('queries only metrics the services export', async () => {
    const exported = new Set((await registry.getMetricsAsJSON()).map((metric) => metric.name));
    const queried = new Set<string>();
    for (const panel of dashboard.panels) {
      for (const target of panel.targets) {
        for (const [name] of (target.expr ?? '').matchAll(/\bbackupmx_\w+/g)) queried.add(name.replace(/_(bucket|count|sum)$/, ''));
      }
    }
    assert.ok(queried.size >= 10, `the dashboard queries ${queried.size} metrics`);
    for (const name of queried) assert.ok(exported.has(name), `${name} is queried but not exported`);
  });

  it('shows what the issue asks for: primary state, spool depth, accept and delivery rates, refusals, and a message trace', () => {
    const expressions = dashboard.panels.flatMap((panel) => panel.targets.map((target) => target.expr ?? ''));
    for (const metric of ['backupmx_primary_up', 'backupmx_spool_queued', 'backupmx_messages_accepted_total', 'backupmx_delivery_attempts_total', 'backupmx_smtp_rejections_total']) {
      assert.ok(expressions.some((expr) => expr.includes(metric)), metric);
    }
    const trace = dashboard.panels.find((panel) => panel.datasource.uid === 'jaeger');
    assert.ok(trace, 'a Jaeger panel');
    assert.equal(trace.targets[0]?.tags, 'backupmx.queue_id=${queue_id}', 'found by the span attribute the services set');
    assert.ok(dashboard.templating.list.some((variable) => variable.name === 'queue_id'));
  });

  it('names only provisioned data sources', () => {
    const provisioned = parseYaml(readFileSync(deploy('grafana/provisioning/datasources/backupmx.yml'), 'utf8')) as { datasources: Array<{ uid: string; url: string }> };
    const uids = new Set(provisioned.datasources.map((source) => source.uid));
    assert.deepEqual([...uids].sort(), ['jaeger', 'prometheus']);
    for (const panel of dashboard.panels) {
      assert.ok(uids.has(panel.datasource.uid), `${panel.title}: ${panel.datasource.uid}`);
      for (const target of panel.targets) assert.ok(uids.has(target.datasource.uid), `${panel.title}: ${target.datasource.uid}`);
    }
  });

  it('scrapes every backupmx service on its HTTP port, and compose mounts the files', () => {
    const prometheus = parseYaml(readFileSync(deploy('prometheus/prometheus.yml'), 'utf8')) as { scrape_configs: Array<{ dns_sd_configs: Array<{ names: string[]; port: number }> }> };
    const { resolved } = loadCompose();
    const ours = Object.keys(resolved.services).filter((name) => (resolved.services[name]?.command?.[0] ?? '').startsWith('services/'));
    const sd = prometheus.scrape_configs[0]?.dns_sd_configs[0];
    assert.deepEqual([...(sd?.names ?? [])].sort(), ours.sort());
    for (const name of ours) assert.equal(String(sd?.port), resolved.services[name]?.environment?.HTTP_PORT, `${name} is scraped on its HTTP_PORT`);
    for (const name of ['prometheus', 'grafana']) {
      for (const volume of resolved.services[name]?.volumes ?? []) {
        const source = volume.split(':')[0] ?? '';
        if (source.startsWith('./')) assert.ok(existsSync(join(ROOT, source)), `${name} mounts ${source}, which exists`);
      }
    }
  });
});
