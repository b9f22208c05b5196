// What the panels show: health and log, throughput, the in-doubt list and one transaction.
// Each function turns an API answer into elements (dom.js: text only, never HTML).

import { bytes, errorLine, facts, h, number, stateBadge, when } from './dom.js';

const FINAL_BRANCH_STATES = new Set(['committed', 'aborted', 'read-only']);
const FINAL_STATES = new Set(['committed', 'aborted', 'unknown']);

/** A branch the decision has not reached yet (the reason a transaction is in doubt). */
export const isPending = (branch) => !FINAL_BRANCH_STATES.has(branch.state) && branch.forgotten === undefined;

export const isFinal = (tx) => FINAL_STATES.has(tx.state) && !tx.inDoubt;

/** A transaction id the operator can click to open it in the detail panel. */
export function txLink(id, open) {
  return h('button', { type: 'button', class: ['link', 'tx-link'], title: 'Show this transaction', onclick: (event) => { event.stopPropagation(); open(id); } }, id);
}

// ---- health ------------------------------------------------------------------------------

export function healthView(health) {
  const log = health.log ?? {};
  const sweep = health.lastRecoverySweep;
  const memory = health.memory;
  return [
    health.status === 'ok' ? null : h('p', { class: ['error', 'big'] }, 'UNHEALTHY: ', health.reason ?? 'no reason given'),
    facts([
      ['Status', stateBadge(health.status === 'ok' ? 'ok' : 'unhealthy', health.status)],
      ['Coordinator id', h('code', {}, health.coordinatorId)],
      ['Log segments', number(log.segments)],
      ['Current segment', bytes(log.currentSegmentBytes)],
      ['Records appended', number(log.appendedRecords)],
      ['fsyncs', number(log.fsyncs)],
      ['Last fsync', typeof log.lastFsyncMicros === 'number' ? `${number(log.lastFsyncMicros)} µs` : '—'],
      ['Compactions', number(log.compactions)],
      ['Memory (RSS / heap / external)', memory === undefined ? undefined : `${bytes(memory.rssBytes)} / ${bytes(memory.heapUsedBytes)} / ${bytes(memory.externalBytes)}`],
    ]),
    h('h3', {}, 'Last recovery sweep'),
    sweep === undefined
      ? h('p', { class: 'muted' }, 'No sweep has run yet.')
      : facts([
          ['When', when(sweep.at)],
          ['Committed / rolled back / failed', `${number(sweep.committed)} / ${number(sweep.rolledBack)} / ${number(sweep.failed)}`],
          ['Unreachable', sweep.unreachable.length === 0 ? h('span', { class: 'ok-text' }, 'none') : h('span', { class: 'error-text' }, sweep.unreachable.join(', '))],
        ]),
  ];
}

// ---- throughput --------------------------------------------------------------------------

function tile(label, value, hint, tone) {
  return h('div', { class: ['tile', tone] }, h('div', { class: 'tile-value' }, value), h('div', { class: 'tile-label' }, label), hint ? h('div', { class: 'tile-hint' }, hint) : null);
}

const SVG = 'http://www.w3.org/2000/svg';

/** A small line chart of the last rates (newest right); no data → nothing. */
function sparkline(values) {
  if (values.length < 2) return null;
  const width = 300;
  const height = 48;
  const peak = Math.max(...values);
  const max = Math.max(1, peak);
  const seconds = (values.length - 1) * 2;
  const step = width / (values.length - 1);
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`).join(' ');
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', 'sparkline');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `finished transactions per second, last ${values.length} samples, peak ${number(peak, 1)}`);
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points);
  svg.append(line);
  const span = seconds < 120 ? `${seconds} s` : `${number(seconds / 60, 1)} min`;
  return h('figure', { class: 'chart' }, svg, h('figcaption', {}, `finished tx/s over the last ${span} (peak ${number(peak, 1)})`));
}

/**
 * `rates`: per-second deltas of /healthz counters between the last two polls (undefined when
 * not known yet, or when a counter went back: a restart, or finished transactions pruned).
 * `outcomes`: committed/aborted counts of the transactions created in the last minutes.
 */
export function throughputView(health, rates, history, outcomes) {
  const perFsync = rates.fsyncs > 0 ? rates.appended / rates.fsyncs : undefined;
  return [
    h('div', { class: 'tiles' },
      tile('finished tx/s', rates.finished === undefined ? '…' : number(rates.finished, 1), 'committed + aborted'),
      tile('log records/s', rates.appended === undefined ? '…' : number(rates.appended, 1)),
      tile('fsyncs/s', rates.fsyncs === undefined ? '…' : number(rates.fsyncs, 1), perFsync === undefined ? undefined : `${number(perFsync, 1)} records per fsync`),
    ),
    h('div', { class: 'tiles' },
      tile('live', number(health.liveTransactions), 'in memory'),
      tile('undecided', number(health.activeTransactions), 'no decision yet'),
      tile('in doubt', number(health.inDoubtTransactions), 'decided, not delivered', health.inDoubtTransactions > 0 ? 'alarm' : undefined),
      tile('finished', number(health.retainedTransactions), 'retained for queries'),
      tile('participants', number(health.participants)),
    ),
    outcomesView(outcomes),
    sparkline(history),
  ];
}

function outcomesView(outcomes) {
  if (outcomes === undefined) return h('p', { class: 'muted' }, 'Outcomes: …');
  if (outcomes.needToken) return h('p', { class: 'muted' }, 'Outcomes: enter a token above.');
  if (outcomes.error !== undefined) return errorLine(outcomes.error);
  const count = (o) => (o.more ? `${number(o.count)}+` : number(o.count));
  return h('p', { class: 'outcomes' },
    `Transactions begun in the last ${outcomes.minutes} min: `,
    stateBadge('committed', `${count(outcomes.committed)} committed`), ' ',
    stateBadge('aborted', `${count(outcomes.aborted)} aborted`),
    h('span', { class: 'muted' }, ' · as of '), when(outcomes.at),
  );
}

// ---- in doubt ----------------------------------------------------------------------------

function pendingBranch(branch) {
  return h('li', { class: 'pending-branch' },
    h('div', {},
      h('strong', {}, branch.participant), ' ', h('span', { class: 'muted' }, `${branch.branchId} · ${branch.kind}`), ' ', stateBadge(branch.state),
      ` · ${number(branch.attempts ?? 0)} attempt${branch.attempts === 1 ? '' : 's'}`,
      branch.lastAttemptAt === undefined ? null : [' · last ', when(branch.lastAttemptAt)],
    ),
    branch.lastError === undefined ? null : h('div', { class: 'last-error' }, h('span', { class: 'label' }, 'last error: '), branch.lastError),
  );
}

/** The in-doubt list: one row per transaction, its pending branches, a Retry button. */
export function inDoubtView(page, { open, retry, retrying }) {
  const transactions = page.transactions;
  const notes = [];
  if (page.nextCursor !== null) notes.push(h('p', { class: 'warning' }, `Only the newest ${transactions.length} are shown; more are in doubt.`));
  if (Array.isArray(page.unreachable) && page.unreachable.length > 0) {
    notes.push(h('p', { class: 'warning' }, `Instances that did not answer (their transactions may be missing here): ${page.unreachable.join(', ')}`));
  }
  if (transactions.length === 0) return [h('p', { class: ['all-clear'] }, 'Nothing in doubt.'), notes];
  const rows = transactions.map((tx) =>
    h('tr', { class: 'tx-row', 'data-id': tx.id, onclick: () => open(tx.id) },
      h('td', {}, txLink(tx.id, open), h('div', { class: 'muted' }, tx.protocol)),
      h('td', {}, stateBadge(tx.state), tx.inDoubt ? [' ', stateBadge('in-doubt', 'in doubt')] : null, h('div', { class: 'muted' }, `decision: ${tx.decision ?? 'none'}`)),
      h('td', {}, when(tx.decidedAt ?? tx.createdAt)),
      h('td', {}, h('ul', { class: 'pending' }, tx.branches.filter(isPending).map(pendingBranch))),
      h('td', {},
        h('button', { type: 'button', class: 'retry', disabled: retrying.has(tx.id), 'aria-label': `Retry ${tx.id}`, onclick: (event) => { event.stopPropagation(); retry(tx.id); } },
          retrying.has(tx.id) ? 'Retrying…' : 'Retry'),
      ),
    ),
  );
  return [
    h('table', { class: 'list' },
      h('thead', {}, h('tr', {}, ['Transaction', 'State', 'Decided', 'Pending branches', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows),
    ),
    notes,
  ];
}

// ---- one transaction ---------------------------------------------------------------------

function branchRow(branch) {
  const notes = [];
  if (branch.lastError !== undefined) notes.push(h('div', { class: 'last-error' }, h('span', { class: 'label' }, 'last error: '), branch.lastError));
  if (branch.reason !== undefined) notes.push(h('div', {}, h('span', { class: 'label' }, 'reason: '), branch.reason));
  if (branch.forgotten !== undefined) {
    notes.push(h('div', { class: 'warning' }, `forgotten by ${branch.forgotten.actor}: ${branch.forgotten.reason} `, when(branch.forgotten.at)));
  }
  return h('tr', { class: isPending(branch) ? 'pending-row' : undefined },
    h('td', {}, branch.branchId),
    h('td', {}, h('strong', {}, branch.participant)),
    h('td', {}, branch.kind),
    h('td', {}, stateBadge(branch.state)),
    h('td', {}, branch.vote ?? '—'),
    h('td', { class: 'num' }, number(branch.attempts ?? 0)),
    h('td', {}, when(branch.lastAttemptAt)),
    h('td', {}, notes.length === 0 ? h('span', { class: 'muted' }, '—') : notes),
  );
}

export function transactionView(tx, { retry, retrying, refresh }) {
  return [
    h('div', { class: 'tx-head' },
      h('code', { class: 'tx-id' }, tx.id), ' ',
      h('span', { class: 'tx-state' }, stateBadge(tx.state)),
      tx.inDoubt ? [' ', stateBadge('in-doubt', 'in doubt')] : null,
      h('span', { class: 'spacer' }),
      tx.inDoubt
        ? h('button', { type: 'button', class: 'retry', disabled: retrying.has(tx.id), onclick: () => retry(tx.id) }, retrying.has(tx.id) ? 'Retrying…' : 'Retry delivery')
        : null,
      h('button', { type: 'button', onclick: refresh }, 'Refresh'),
    ),
    tx.reason === undefined ? null : h('p', { class: 'reason' }, h('span', { class: 'label' }, 'Reason: '), tx.reason),
    facts([
      ['Protocol', tx.onePhase === true ? `${tx.protocol} (one-phase commit)` : tx.protocol],
      ['Decision', tx.decision ?? 'none yet'],
      ['Timeout', `${number(tx.timeoutMs)} ms`],
      ['Created', when(tx.createdAt)],
      ['Times out', tx.expiresAt === undefined || tx.decision !== null ? undefined : when(tx.expiresAt)],
      ['Decided', tx.decidedAt === undefined ? undefined : when(tx.decidedAt)],
      ['Ended', tx.endedAt === undefined ? undefined : when(tx.endedAt)],
    ]),
    tx.branches.length === 0
      ? h('p', { class: 'muted' }, 'No branches.')
      : h('table', { class: 'list' },
          h('thead', {}, h('tr', {}, ['Branch', 'Participant', 'Kind', 'State', 'Vote', 'Attempts', 'Last attempt', 'Notes'].map((t) => h('th', { scope: 'col' }, t)))),
          h('tbody', {}, tx.branches.map(branchRow)),
        ),
  ];
}
