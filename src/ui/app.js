// The dashboard's controller: polls the coordinator's API, keeps what it answered, and hands
// it to the views. /healthz, the in-doubt list and the open transaction every 2 s; the
// participants (and what is prepared on each) and the outcome counts every 10 s. A 401 from
// any call brings up the token form; the token is kept for this tab only (sessionStorage).

import { api, ApiError, clearToken, onUnauthorized, segment, setToken, token } from './api.js';
import { fill, h, refreshAges, showError, stateBadge, errorLine, when } from './dom.js';
import { participantsView } from './participants.js';
import { healthView, inDoubtView, isFinal, throughputView, transactionView } from './views.js';

const FAST_MS = 2000;
const SLOW_MS = 10000;
/** Outcome counts cover the transactions begun this many minutes back, at most OUTCOME_LIMIT each. */
const OUTCOME_MINUTES = 5;
const OUTCOME_LIMIT = 1000;
/** Throughput samples kept for the chart (2 min at 2 s). */
const HISTORY = 60;
const ID_PATTERN = /^[A-Za-z0-9-]{1,64}$/;

const $ = (selector) => document.querySelector(selector);
const panel = (id) => ({ root: $(`#${id}`), body: $(`#${id} .body`), error: $(`#${id} .panel-error`) });
const panels = { health: panel('health'), throughput: panel('throughput'), inDoubt: panel('in-doubt'), detail: panel('detail'), participants: panel('participants') };

const state = {
  needToken: false,
  health: undefined,
  healthAt: undefined,
  lastSample: undefined,
  rates: {},
  history: [],
  outcomes: undefined,
  inDoubt: [],
  participants: undefined,
  prepared: new Map(),
  selected: undefined,
  detail: undefined,
  retrying: new Set(),
  /** What each panel shows now (JSON): an unchanged answer is not re-rendered under the operator's pointer. */
  shown: new Map(),
};

/** Renders `view()` into the panel unless `key` says it shows that already. */
function render(target, key, view) {
  if (key !== undefined && state.shown.get(target.body) === key) return;
  state.shown.set(target.body, key);
  fill(target.body, view());
}

/** One run at a time: a call while one runs gets that run. */
function task(work) {
  let running;
  return () => (running ??= work().catch((err) => console.error('dashboard:', err)).finally(() => { running = undefined; }));
}

function every(ms, run) {
  const loop = () => void run().finally(() => setTimeout(loop, ms));
  loop();
}

// ---- token ---------------------------------------------------------------------------------

onUnauthorized((err, sent) => {
  if (sent !== token()) return; // an answer to the token used before this one
  state.needToken = true;
  const reason = $('#token-reason');
  reason.hidden = token() === '';
  fill(reason, token() === '' ? '' : errorLine(err));
  if ($('#token-panel').hidden) {
    $('#token-panel').hidden = false;
    $('#token-input').focus();
  }
  for (const p of [panels.inDoubt, panels.detail, panels.participants]) {
    showError(p.error, undefined);
    render(p, 'need-token', () => h('p', { class: 'muted' }, 'Enter a token above to see this.'));
  }
});

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const value = $('#token-input').value.trim();
  if (value === '') return;
  setToken(value);
  $('#token-input').value = '';
  $('#token-panel').hidden = true;
  state.needToken = false;
  state.shown.clear();
  for (const p of [panels.inDoubt, panels.participants]) render(p, undefined, () => h('p', { class: 'muted' }, 'Loading…'));
  if (state.selected === undefined) render(panels.detail, undefined, () => h('p', { class: 'muted' }, 'Click a transaction, or enter its id.'));
  updateTokenButton();
  void refreshAll();
});

$('#forget-token').addEventListener('click', () => {
  clearToken();
  updateTokenButton();
  state.shown.clear();
  void refreshAll();
});

function updateTokenButton() {
  $('#forget-token').hidden = token() === '';
}

// ---- health and throughput ---------------------------------------------------------------

function sample(health) {
  const now = Date.now();
  const next = { at: now, id: health.coordinatorId, finished: health.retainedTransactions, appended: health.log?.appendedRecords, fsyncs: health.log?.fsyncs };
  const prev = state.lastSample;
  state.lastSample = next;
  const seconds = prev === undefined ? 0 : (now - prev.at) / 1000;
  // A counter that went back (a restart; finished transactions pruned) says nothing about this interval.
  const rate = (key) => {
    if (prev === undefined || prev.id !== next.id || seconds <= 0) return undefined;
    const delta = next[key] - prev[key];
    return Number.isFinite(delta) && delta >= 0 ? delta / seconds : undefined;
  };
  state.rates = { finished: rate('finished'), appended: rate('appended'), fsyncs: rate('fsyncs') };
  if (state.rates.finished !== undefined) state.history = [...state.history, state.rates.finished].slice(-HISTORY);
}

function setBadge(status, label) {
  const badge = stateBadge(status, label);
  badge.id = 'health-badge';
  $('#health-badge').replaceWith(badge);
}

const pollHealth = task(async () => {
  let health;
  try {
    health = await api('GET', 'healthz', { accept: [503] });
  } catch (err) {
    setBadge('no-answer', 'no answer');
    const banner = $('#banner');
    fill(banner, errorLine(err), state.healthAt === undefined ? null : h('p', {}, 'Last answer: ', when(new Date(state.healthAt).toISOString())));
    banner.hidden = false;
    return;
  }
  $('#banner').hidden = true;
  state.health = health;
  state.healthAt = Date.now();
  sample(health);
  setBadge(health.status === 'ok' ? 'ok' : 'unhealthy', health.status === 'ok' ? 'healthy' : 'UNHEALTHY');
  $('#coordinator-id').textContent = `coordinator ${health.coordinatorId}`;
  fill($('#updated'), 'updated ', when(new Date(state.healthAt).toISOString()));
  document.title = `${health.inDoubtTransactions > 0 ? `(${health.inDoubtTransactions} in doubt) ` : ''}${health.status === 'ok' ? '' : 'UNHEALTHY '}tx-coordinator`;
  render(panels.health, undefined, () => healthView(health));
  renderThroughput();
});

function renderThroughput() {
  if (state.health === undefined) return;
  const outcomes = state.needToken ? { needToken: true } : state.outcomes;
  render(panels.throughput, undefined, () => throughputView(state.health, state.rates, state.history, outcomes));
}

const pollOutcomes = task(async () => {
  if (state.needToken) return;
  const since = encodeURIComponent(new Date(Date.now() - OUTCOME_MINUTES * 60000).toISOString());
  const count = async (outcome) => {
    const page = await api('GET', `v1/transactions?state=${outcome}&since=${since}&limit=${OUTCOME_LIMIT}`);
    return { count: page.transactions.length, more: page.nextCursor !== null };
  };
  try {
    const [committed, aborted] = await Promise.all([count('committed'), count('aborted')]);
    state.outcomes = { minutes: OUTCOME_MINUTES, committed, aborted, at: new Date().toISOString() };
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    state.outcomes = { error: err };
  }
  renderThroughput();
});

// ---- in doubt, and one transaction ---------------------------------------------------------

function notice(...content) {
  fill($('#in-doubt .notice'), ...content);
}

async function retry(id) {
  if (state.retrying.has(id)) return;
  state.retrying.add(id);
  renderInDoubt();
  renderDetail();
  try {
    const view = await api('POST', `v1/transactions/${segment(id)}/retry`);
    notice(h('p', { class: 'done' }, `Retried ${id}: now `, stateBadge(view.state), view.inDoubt ? ' — still in doubt (the participant did not acknowledge).' : '.'));
    if (state.selected === id) state.detail = view;
  } catch (err) {
    notice(h('div', {}, h('p', {}, `Retry of ${id} failed:`), errorLine(err)));
  } finally {
    state.retrying.delete(id);
    renderInDoubt();
    renderDetail();
    void pollInDoubt();
  }
}

let inDoubtPage;

function renderInDoubt() {
  if (inDoubtPage === undefined) return;
  const count = inDoubtPage.transactions.length;
  fill($('#in-doubt .count'), count === 0 ? '' : stateBadge('in-doubt', String(count)));
  render(panels.inDoubt, JSON.stringify([inDoubtPage, [...state.retrying]]), () => inDoubtView(inDoubtPage, { open, retry, retrying: state.retrying }));
}

const pollInDoubt = task(async () => {
  if (state.needToken) return;
  try {
    inDoubtPage = await api('GET', 'v1/transactions?state=in-doubt&limit=100');
    state.inDoubt = inDoubtPage.transactions;
    showError(panels.inDoubt.error, undefined);
    renderInDoubt();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(panels.inDoubt.error, err);
  }
});

function renderDetail() {
  const tx = state.detail;
  if (tx === undefined || tx.id !== state.selected) return;
  render(panels.detail, JSON.stringify([tx, state.retrying.has(tx.id)]), () => transactionView(tx, { retry, retrying: state.retrying, refresh: () => open(tx.id) }));
}

const pollDetail = task(async () => {
  const id = state.selected;
  if (id === undefined || state.needToken) return;
  if (state.detail?.id === id && isFinal(state.detail)) return; // finished: it no longer changes
  try {
    const tx = await api('GET', `v1/transactions/${segment(id)}`);
    if (state.selected !== id) return;
    state.detail = tx;
    showError(panels.detail.error, undefined);
    renderDetail();
  } catch (err) {
    if (state.selected !== id || (err instanceof ApiError && err.status === 401)) return;
    showError(panels.detail.error, err);
    if (err instanceof ApiError && err.status === 404) render(panels.detail, undefined, () => h('p', { class: 'muted' }, `No transaction ${id} is known.`));
  }
});

function open(id) {
  state.selected = id;
  state.detail = undefined;
  $('#search-input').value = id;
  showError(panels.detail.error, undefined);
  render(panels.detail, undefined, () => h('p', { class: 'muted' }, `Loading ${id}…`));
  panels.detail.root.scrollIntoView({ block: 'nearest' });
  void pollDetail();
}

$('#search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('#search-input').value.trim();
  if (!ID_PATTERN.test(id)) {
    showError(panels.detail.error, new ApiError(0, 'INVALID_ID', 'a transaction id is 1–64 letters, digits and dashes'));
    return;
  }
  open(id);
});

// ---- participants ----------------------------------------------------------------------------

function renderParticipants() {
  if (state.participants === undefined) return;
  const key = JSON.stringify([state.participants, [...state.prepared], state.health?.lastRecoverySweep?.unreachable, state.inDoubt.map((t) => t.branches)]);
  render(panels.participants, key, () => participantsView(state.participants, state.prepared, state.health, state.inDoubt, open));
}

const pollParticipants = task(async () => {
  if (state.needToken) return;
  try {
    state.participants = await api('GET', 'v1/participants');
    showError(panels.participants.error, undefined);
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(panels.participants.error, err);
    return;
  }
  const names = new Set(state.participants.participants.map((p) => p.name));
  for (const name of state.prepared.keys()) if (!names.has(name)) state.prepared.delete(name);
  renderParticipants();
  await Promise.all([...names].map(async (name) => {
    try {
      const listing = await api('GET', `v1/participants/${segment(name)}/prepared`);
      state.prepared.set(name, { branches: listing.branches, at: new Date().toISOString() });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return;
      state.prepared.set(name, { error: { code: err.code, status: err.status, message: err.message }, at: new Date().toISOString() });
    }
    renderParticipants();
  }));
});

// ---- start -----------------------------------------------------------------------------------

function refreshAll() {
  return Promise.all([pollHealth(), pollInDoubt(), pollDetail(), pollParticipants(), pollOutcomes()]);
}

updateTokenButton();
every(FAST_MS, pollHealth);
every(FAST_MS, pollInDoubt);
every(FAST_MS, pollDetail);
every(SLOW_MS, pollParticipants);
every(SLOW_MS, pollOutcomes);
setInterval(() => refreshAges(), 1000);
