/**
 * The Grafana dashboard and the Prometheus alert rules under deploy/ ask only for metrics the
 * coordinator really exports (read from a real /metrics), so they cannot drift from the code.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { REPO_ROOT } from '../support/coordinator-process.js';
import { startCoordinator, type InProcessCoordinator } from '../support/in-process-coordinator.js';

let c: InProcessCoordinator;
let exported: Set<string>;

beforeAll(async () => {
  c = await startCoordinator();
  const text = (await c.app.inject({ method: 'GET', url: '/metrics' })).body;
  exported = new Set([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap((m) => (m[2] === 'histogram' ? [`${m[1]}_bucket`, `${m[1]}_sum`, `${m[1]}_count`] : [m[1]!])));
});

afterAll(async () => {
  await c.destroy();
});

/** Metric names in a PromQL expression (identifiers followed by a selector, a range or an operator). */
function metricsIn(expr: string): string[] {
  const names = [...expr.matchAll(/\b((?:tcx|process|nodejs)_[a-z0-9_]+)\b/g)].map((m) => m[1]!);
  return [...new Set(names)];
}

describe('deploy/', () => {
  it('alert rules: valid YAML, the alerts the runbook names, every metric exported', () => {
    const rules = parse(fs.readFileSync(path.join(REPO_ROOT, 'deploy/prometheus/alerts.yml'), 'utf8')) as { groups: { rules: { alert: string; expr: string }[] }[] };
    const all = rules.groups.flatMap((g) => g.rules);
    expect(all.map((r) => r.alert)).toEqual(expect.arrayContaining(['TcxTransactionsInDoubt', 'TcxLogUnhealthy', 'TcxParticipantErrors']));
    const used = all.flatMap((r) => metricsIn(r.expr));
    expect(used.length).toBeGreaterThan(5);
    expect(used.filter((m) => !exported.has(m))).toEqual([]);
    expect(all.find((r) => r.alert === 'TcxTransactionsInDoubt')?.expr).toMatch(/\[5m\]/);
  });

  it('Grafana dashboard: valid JSON, one datasource input, every panel queries exported metrics', () => {
    const dashboard = JSON.parse(fs.readFileSync(path.join(REPO_ROOT, 'deploy/grafana/tcx-dashboard.json'), 'utf8')) as {
      __inputs: { name: string }[];
      panels: { title: string; targets: { expr: string }[] }[];
    };
    expect(dashboard.__inputs.map((i) => i.name)).toEqual(['DS_PROMETHEUS']);
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(8);
    const used = dashboard.panels.flatMap((p) => p.targets.flatMap((t) => metricsIn(t.expr)));
    expect(used.filter((m) => !exported.has(m))).toEqual([]);
    for (const name of ['tcx_transactions_total', 'tcx_in_doubt_transactions', 'tcx_log_fsync_seconds_bucket', 'tcx_participant_errors_total']) expect(used).toContain(name);
  });
});
