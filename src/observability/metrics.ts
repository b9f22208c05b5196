/**
 * Prometheus metrics (prom-client), fed by the event seam (events.ts) and by gauges read at
 * scrape time. Names start with `tcx_`; labels are bounded: participant names (registered by
 * an operator), kinds, calls, protocols, outcomes, phases, error codes — never a transaction
 * id or a gid. Node's default process metrics come along unprefixed, as dashboards expect.
 */

import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { events } from './events.js';
import { FastHistogram } from './histogram.js';

/** What the gauges read at scrape time. */
export interface MetricsSource {
  /** Begun and not decided yet. */
  activeTransactions(): number;
  /** Begun and not ended (decided ones still delivering phase 2 included). */
  liveTransactions(): number;
  inDoubtTransactions(): number;
  retainedTransactions(): number;
  /** False once the write-ahead log failed (fail-stop). */
  logHealthy(): boolean;
}

/** Seconds: from a loopback round trip to a slow participant's timeout. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const FSYNC_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

export class CoordinatorMetrics {
  readonly registry = new Registry();
  readonly #unsubscribe: (() => void)[] = [];

  constructor(source: MetricsSource) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });

    const transactions = new Counter({ name: 'tcx_transactions_total', help: 'Transactions ended, by protocol and outcome.', labelNames: ['protocol', 'outcome'], registers });
    const duration = new FastHistogram('tcx_transaction_duration_seconds', 'From begin (or resumption by recovery) to the end record.', ['protocol', 'outcome'], LATENCY_BUCKETS, registers);
    const phases = new FastHistogram(
      'tcx_transaction_phase_duration_seconds',
      'Per phase: work (running the branches), prepare (until the decision is durable), deliver (phase 2 until every branch acknowledged).',
      ['protocol', 'phase'],
      LATENCY_BUCKETS,
      registers,
    );
    new Gauge({ name: 'tcx_active_transactions', help: 'Transactions begun and not decided yet.', registers, collect() { this.set(source.activeTransactions()); } });
    new Gauge({ name: 'tcx_live_transactions', help: 'Transactions begun and not ended (phase 2 still under way included).', registers, collect() { this.set(source.liveTransactions()); } });
    new Gauge({
      name: 'tcx_in_doubt_transactions',
      help: 'Decided transactions whose phase 2 has not reached every branch yet (retrying).',
      registers,
      collect() {
        this.set(source.inDoubtTransactions());
      },
    });
    new Gauge({ name: 'tcx_retained_transactions', help: 'Finished transactions kept for queries (TCX_RETENTION_HOURS).', registers, collect() { this.set(source.retainedTransactions()); } });
    new Gauge({ name: 'tcx_log_healthy', help: '1 while the write-ahead log works; 0 once it failed (fail-stop: nothing more is decided).', registers, collect() { this.set(source.logHealthy() ? 1 : 0); } });

    const fsync = new FastHistogram('tcx_log_fsync_seconds', 'Making a batch of log records durable: the fdatasync, or the Postgres commit.', ['backend'], FSYNC_BUCKETS, registers);
    const batch = new FastHistogram('tcx_log_batch_records', 'Records written per log batch (group commit).', ['backend', 'forced'], BATCH_BUCKETS, registers);

    const callDuration = new FastHistogram(
      'tcx_participant_call_duration_seconds',
      'Calls into participants: work, prepare, can-commit, pre-commit, commit, abort, find-prepared, commit-one-phase, one-phase-outcome.',
      ['participant', 'call'],
      LATENCY_BUCKETS,
      registers,
    );
    const callErrors = new Counter({ name: 'tcx_participant_errors_total', help: 'Failed calls into participants, by catalogue error code.', labelNames: ['participant', 'call', 'code'], registers });

    const sweeps = new Counter({ name: 'tcx_recovery_sweeps_total', help: 'Recovery sweeps of the participants for prepared branches.', registers });
    const swept = new Counter({
      name: 'tcx_recovery_branches_total',
      help: 'Prepared branches no running transaction owned, resolved by recovery sweeps (committed, rolled-back) or not (failed).',
      labelNames: ['result'],
      registers,
    });
    const unreachable = new Counter({ name: 'tcx_recovery_unreachable_participants_total', help: 'Participants a recovery sweep could not list.', registers });
    const resumed = new Counter({ name: 'tcx_recovery_resumed_transactions_total', help: 'Unfinished transactions recovery resumed from the log, by what it does with them.', labelNames: ['decision'], registers });

    this.#unsubscribe.push(
      events.transactionEnded.subscribe((e) => {
        transactions.inc({ protocol: e.protocol, outcome: e.outcome });
        duration.labels(e.protocol, e.outcome).observe(e.durationMs / 1000);
        phases.labels(e.protocol, 'work').observe(e.workMs / 1000);
        if (e.prepareMs !== undefined) phases.labels(e.protocol, 'prepare').observe(e.prepareMs / 1000);
        if (e.deliverMs !== undefined) phases.labels(e.protocol, 'deliver').observe(e.deliverMs / 1000);
      }),
      events.logFlushed.subscribe((e) => {
        batch.labels(e.backend, String(e.forced)).observe(e.records);
        if (e.forced) fsync.labels(e.backend).observe(e.durationMs / 1000);
      }),
      events.participantCall.subscribe((e) => {
        callDuration.labels(e.participant, e.call).observe(e.durationMs / 1000);
        if (e.errorCode !== undefined) callErrors.inc({ participant: e.participant, call: e.call, code: e.errorCode });
      }),
      events.recoverySwept.subscribe((e) => {
        sweeps.inc();
        if (e.committed > 0) swept.inc({ result: 'committed' }, e.committed);
        if (e.rolledBack > 0) swept.inc({ result: 'rolled-back' }, e.rolledBack);
        if (e.failed > 0) swept.inc({ result: 'failed' }, e.failed);
        if (e.unreachable > 0) unreachable.inc(e.unreachable);
      }),
      events.transactionResumed.subscribe((e) => resumed.inc({ decision: e.decision })),
    );
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Stops listening (the registry keeps what it has). */
  close(): void {
    for (const unsubscribe of this.#unsubscribe.splice(0)) unsubscribe();
  }
}
