import { describe, expect, it } from 'vitest';
import {
  initialState,
  InvalidTransitionError,
  step,
  type Decision,
  type TwoPhaseAction,
  type TwoPhaseEvent,
  type TwoPhaseState,
  type Vote,
} from '../../src/protocol/two-phase-commit.js';

function run(events: TwoPhaseEvent[], from: TwoPhaseState = initialState()): { state: TwoPhaseState; actions: TwoPhaseAction[] } {
  let state = from;
  const actions: TwoPhaseAction[] = [];
  for (const e of events) {
    const s = step(state, e);
    state = s.state;
    actions.push(...s.actions);
  }
  return { state, actions };
}

const enlistTwo: TwoPhaseEvent[] = [
  { type: 'enlist', branchId: 'b1' },
  { type: 'enlist', branchId: 'b2' },
];

describe('2PC state machine', () => {
  it('commits when every branch votes yes, forcing the decision before any commit is delivered', () => {
    const { state, actions } = run([
      ...enlistTwo,
      { type: 'commit' },
      { type: 'vote', branchId: 'b1', vote: 'yes' },
      { type: 'vote', branchId: 'b2', vote: 'yes' },
    ]);
    expect(state.phase).toBe('deciding');
    expect(actions).toEqual([
      { type: 'prepare-branches', branchIds: ['b1', 'b2'] },
      { type: 'log-decision', decision: 'commit', force: true },
    ]);
    const after = run([{ type: 'decision-durable', decision: 'commit' }], state);
    expect(after.actions).toEqual([{ type: 'deliver', decision: 'commit', branchIds: ['b1', 'b2'] }]);
    const done = run(
      [
        { type: 'ack', branchId: 'b2' },
        { type: 'ack', branchId: 'b1' },
      ],
      after.state,
    );
    expect(done.state.phase).toBe('committed');
    expect(done.actions).toEqual([{ type: 'log-end', outcome: 'commit' }]);
  });

  it('aborts without a forced write when one branch votes no, after every prepare has answered', () => {
    const first = run([...enlistTwo, { type: 'commit' }, { type: 'vote', branchId: 'b1', vote: 'no', reason: 'check violated' }]);
    expect(first.state.phase).toBe('preparing'); // b2's prepare still in flight
    expect(first.actions.filter((a) => a.type === 'log-decision')).toEqual([]);
    const second = run([{ type: 'vote', branchId: 'b2', vote: 'yes' }], first.state);
    expect(second.actions).toEqual([{ type: 'log-decision', decision: 'abort', force: false }]);
    expect(second.state.abortReason).toBe('check violated');
    const delivered = run([{ type: 'decision-durable', decision: 'abort' }], second.state);
    expect(delivered.actions).toEqual([{ type: 'deliver', decision: 'abort', branchIds: ['b2'] }]);
  });

  it('skips phase 2 for read-only branches', () => {
    const { state, actions } = run([
      ...enlistTwo,
      { type: 'commit' },
      { type: 'vote', branchId: 'b1', vote: 'read-only' },
      { type: 'vote', branchId: 'b2', vote: 'yes' },
      { type: 'decision-durable', decision: 'commit' },
    ]);
    expect(actions.at(-1)).toEqual({ type: 'deliver', decision: 'commit', branchIds: ['b2'] });
    expect(run([{ type: 'ack', branchId: 'b2' }], state).state.phase).toBe('committed');
  });

  it('waits in prepared for the client, then commits or aborts', () => {
    const prepared = run([...enlistTwo, { type: 'prepare' }, { type: 'vote', branchId: 'b1', vote: 'yes' }, { type: 'vote', branchId: 'b2', vote: 'yes' }]);
    expect(prepared.state.phase).toBe('prepared');
    expect(run([{ type: 'commit' }], prepared.state).actions).toEqual([{ type: 'log-decision', decision: 'commit', force: true }]);
    expect(run([{ type: 'timeout' }], prepared.state).actions).toEqual([{ type: 'log-decision', decision: 'abort', force: false }]);
  });

  it('times out an abandoned active transaction into abort, rolling back open branches', () => {
    const { actions } = run([...enlistTwo, { type: 'timeout' }, { type: 'decision-durable', decision: 'abort' }]);
    expect(actions).toEqual([
      { type: 'log-decision', decision: 'abort', force: false },
      { type: 'deliver', decision: 'abort', branchIds: ['b1', 'b2'] },
    ]);
  });

  it('never aborts once the commit decision was made, and ignores a late timeout', () => {
    const deciding = run([...enlistTwo, { type: 'commit' }, { type: 'vote', branchId: 'b1', vote: 'yes' }, { type: 'vote', branchId: 'b2', vote: 'yes' }]);
    expect(() => step(deciding.state, { type: 'abort', reason: 'x' })).toThrow(InvalidTransitionError);
    expect(step(deciding.state, { type: 'timeout' }).actions).toEqual([]);
  });

  it('treats duplicated votes and acknowledgements as no-ops', () => {
    const s = run([...enlistTwo, { type: 'commit' }, { type: 'vote', branchId: 'b1', vote: 'yes' }]);
    expect(step(s.state, { type: 'vote', branchId: 'b1', vote: 'no' })).toEqual({ state: s.state, actions: [] });
  });

  it('rejects enlisting after prepare and unknown branches', () => {
    const s = run([...enlistTwo, { type: 'prepare' }]);
    expect(() => step(s.state, { type: 'enlist', branchId: 'b3' })).toThrow(InvalidTransitionError);
    expect(() => step(s.state, { type: 'vote', branchId: 'nope', vote: 'yes' })).toThrow(InvalidTransitionError);
  });

  it('commits an empty transaction without any participant call', () => {
    const { state, actions } = run([{ type: 'commit' }, { type: 'decision-durable', decision: 'commit' }]);
    expect(state.phase).toBe('committed');
    expect(actions.map((a) => a.type)).toEqual(['log-decision', 'log-end']);
  });
});

/**
 * Exhaustive exploration: every interleaving of client requests, votes (yes,
 * no, read-only), duplicated votes and acks, a timeout and the durable
 * decision, for up to three branches. The environment answers each action
 * the machine emitted at any later moment, possibly twice. Every reachable
 * state is checked against the rules.
 */
describe('2PC state machine, every interleaving', () => {
  interface World {
    readonly state: TwoPhaseState;
    readonly preparesSent: readonly string[];
    readonly decisionLogged: Decision | null;
    readonly decisionDurable: boolean;
    readonly delivered: Readonly<Record<string, Decision>>;
    readonly acked: readonly string[];
    readonly votes: Readonly<Record<string, Vote>>;
    readonly clientAsked: boolean;
    readonly timedOut: boolean;
    readonly ended: Decision | null;
  }

  function applyActions(world: World, actions: readonly TwoPhaseAction[]): World {
    let w = world;
    for (const a of actions) {
      switch (a.type) {
        case 'prepare-branches':
          for (const id of a.branchIds) {
            expect(w.preparesSent, `prepare sent twice to ${id}`).not.toContain(id);
          }
          w = { ...w, preparesSent: [...w.preparesSent, ...a.branchIds] };
          break;
        case 'log-decision':
          expect(w.decisionLogged, 'two decisions').toBeNull();
          if (a.decision === 'commit') {
            expect(a.force, 'commit decision must be forced').toBe(true);
            for (const id of Object.keys(w.state.branches)) {
              expect(['yes', 'read-only'], `commit decided without a yes from ${id}`).toContain(w.votes[id]);
            }
          }
          w = { ...w, decisionLogged: a.decision };
          break;
        case 'deliver':
          if (a.decision === 'commit') expect(w.decisionDurable, 'commit delivered before the decision was durable').toBe(true);
          for (const id of a.branchIds) {
            const before = w.delivered[id];
            expect(before === undefined || before === a.decision, `branch ${id} told both outcomes`).toBe(true);
            if (a.decision === 'abort') {
              // Never tell a branch to abort while its prepare is in flight.
              const inFlight = w.preparesSent.includes(id) && w.votes[id] === undefined;
              expect(inFlight, `abort sent to ${id} during its prepare`).toBe(false);
            }
            if (a.decision === 'commit') expect(w.votes[id], `commit sent to ${id} that did not vote yes`).toBe('yes');
          }
          w = { ...w, delivered: { ...w.delivered, ...Object.fromEntries(a.branchIds.map((id) => [id, a.decision])) } };
          break;
        case 'log-end':
          expect(w.ended).toBeNull();
          expect(a.outcome).toBe(w.decisionLogged);
          w = { ...w, ended: a.outcome };
          break;
      }
    }
    return w;
  }

  function events(w: World): TwoPhaseEvent[] {
    const out: TwoPhaseEvent[] = [];
    if (!w.clientAsked) out.push({ type: 'commit' }, { type: 'prepare' }, { type: 'abort', reason: 'client' });
    if (w.state.phase === 'prepared') out.push({ type: 'commit' }, { type: 'abort', reason: 'client' });
    if (!w.timedOut) out.push({ type: 'timeout' });
    for (const id of w.preparesSent) {
      if (w.votes[id] === undefined) {
        for (const vote of ['yes', 'no', 'read-only'] as const) out.push({ type: 'vote', branchId: id, vote });
      } else {
        out.push({ type: 'vote', branchId: id, vote: w.votes[id] === 'yes' ? 'no' : 'yes' }); // duplicate/late
      }
    }
    if (w.decisionLogged !== null && !w.decisionDurable) out.push({ type: 'decision-durable', decision: w.decisionLogged });
    for (const id of Object.keys(w.delivered)) out.push({ type: 'ack', branchId: id }); // includes duplicates
    return out;
  }

  function next(w: World, e: TwoPhaseEvent): World | undefined {
    let result;
    try {
      result = step(w.state, e);
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidTransitionError);
      return undefined;
    }
    let n: World = { ...w, state: result.state };
    if (e.type === 'commit' || e.type === 'prepare' || e.type === 'abort') n = { ...n, clientAsked: true };
    if (e.type === 'timeout') n = { ...n, timedOut: true };
    if (e.type === 'vote' && w.votes[e.branchId] === undefined) n = { ...n, votes: { ...n.votes, [e.branchId]: e.vote } };
    if (e.type === 'decision-durable') n = { ...n, decisionDurable: true };
    if (e.type === 'ack' && !n.acked.includes(e.branchId)) n = { ...n, acked: [...n.acked, e.branchId] };
    n = applyActions(n, result.actions);
    if (n.state.phase === 'committed') {
      for (const [id, vote] of Object.entries(n.votes)) if (vote === 'yes') expect(n.delivered[id]).toBe('commit');
    }
    return n;
  }

  for (const branchCount of [1, 2, 3]) {
    it(`keeps every rule in every reachable state with ${branchCount} branch(es)`, () => {
      let state = initialState();
      for (let i = 1; i <= branchCount; i++) state = step(state, { type: 'enlist', branchId: `b${i}` }).state;
      const start: World = {
        state,
        preparesSent: [],
        decisionLogged: null,
        decisionDurable: false,
        delivered: {},
        acked: [],
        votes: {},
        clientAsked: false,
        timedOut: false,
        ended: null,
      };
      const seen = new Set<string>();
      const stack: World[] = [start];
      let terminal = 0;
      while (stack.length > 0) {
        const w = stack.pop() as World;
        const key = JSON.stringify(w);
        if (seen.has(key)) continue;
        seen.add(key);
        const evs = events(w);
        let moved = false;
        for (const e of evs) {
          const n = next(w, e);
          if (n !== undefined && JSON.stringify(n) !== key) {
            stack.push(n);
            moved = true;
          }
        }
        if (!moved) {
          terminal++;
          // Quiescent: once every message was answered, the transaction has ended.
          expect(['committed', 'aborted', 'active', 'prepared']).toContain(w.state.phase);
        }
      }
      expect(seen.size).toBeGreaterThan(10);
      expect(terminal).toBeGreaterThan(0);
    });
  }
});
