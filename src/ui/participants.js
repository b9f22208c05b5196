// The participants panel: every registered participant, how it is doing, and the branches
// prepared on it (GET /v1/participants/{name}/prepared) with what the log says of each.
//
// A participant's status combines what the coordinator knows: whether it answered the
// prepared-branches question just now (an error shows its catalogue code, e.g.
// PARTICIPANT_UNREACHABLE), whether the last recovery sweep reached it, and how many in-doubt
// deliveries wait for it.

import { errorLine, h, number, stateBadge, when } from './dom.js';
import { isPending, txLink } from './views.js';

const address = (p) => p.connectionString ?? p.url ?? p.baseUrl ?? '—';

function logSays(log) {
  if (!log.known) return h('span', { class: 'warning' }, log.live ? 'running' : 'not in the log (presumed abort)');
  const parts = [`decision: ${log.decision ?? 'none'}`];
  if (log.outcome !== null) parts.push(`outcome: ${log.outcome}`);
  if (log.live) parts.push('running');
  return parts.join(' · ');
}

function preparedView(listing) {
  if (listing === undefined) return h('p', { class: 'muted' }, 'Asking…');
  if (listing.error !== undefined) return h('p', { class: 'muted' }, 'Could not ask (see status).');
  if (listing.branches.length === 0) return h('p', { class: 'muted' }, 'Nothing prepared.');
  return h('table', { class: ['list', 'compact'] },
    h('thead', {}, h('tr', {}, ['Gid', 'Transaction', 'Branch', 'What the log says'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, listing.branches.map((b) =>
      h('tr', {},
        h('td', {}, h('code', {}, b.gid)),
        h('td', {}, b.transactionId === null ? '—' : txLink(b.transactionId, listing.open)),
        h('td', {}, b.branchId ?? '—'),
        h('td', {}, logSays(b.log)),
      ),
    )),
  );
}

function status(participant, listing, unreachableAtSweep, pending) {
  const lines = [];
  if (listing?.error !== undefined) lines.push(errorLine(listing.error));
  else if (listing !== undefined) lines.push(h('div', {}, stateBadge('ok', 'answers'), ` · ${number(listing.branches.length)} prepared`, ' · ', when(listing.at)));
  if (unreachableAtSweep) lines.push(h('div', { class: 'error-text' }, 'unreachable at the last recovery sweep'));
  if (pending > 0) lines.push(h('div', { class: 'warning' }, `${number(pending)} in-doubt deliver${pending === 1 ? 'y' : 'ies'} waiting`));
  for (const warning of participant.warnings ?? []) lines.push(h('div', { class: 'warning' }, warning));
  return lines;
}

/**
 * @param {{participants: object[]}} list GET /v1/participants
 * @param {Map<string, {branches?: object[], error?: Error, at?: string}>} prepared per participant
 * @param {object | undefined} health the last /healthz answer
 * @param {object[]} inDoubt the in-doubt transactions
 * @param {(id: string) => void} open
 */
export function participantsView(list, prepared, health, inDoubt, open) {
  if (list.participants.length === 0) return h('p', { class: 'muted' }, 'No participant is registered.');
  const unreachable = new Set(health?.lastRecoverySweep?.unreachable ?? []);
  const pendingOn = new Map();
  for (const tx of inDoubt) for (const b of tx.branches.filter(isPending)) pendingOn.set(b.participant, (pendingOn.get(b.participant) ?? 0) + 1);
  return h('table', { class: 'list' },
    h('thead', {}, h('tr', {}, ['Participant', 'Address', 'Registered', 'Status', 'Prepared branches'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, list.participants.map((p) => {
      const listing = prepared.get(p.name);
      return h('tr', { class: 'participant-row', 'data-name': p.name },
        h('td', {}, h('strong', {}, p.name), h('div', { class: 'muted' }, p.kind)),
        h('td', {}, h('code', { class: 'address' }, address(p))),
        h('td', {}, when(p.registeredAt)),
        h('td', { class: 'participant-status' }, status(p, listing, unreachable.has(p.name), pendingOn.get(p.name) ?? 0)),
        h('td', {}, preparedView(listing === undefined ? undefined : { ...listing, open })),
      );
    })),
  );
}
