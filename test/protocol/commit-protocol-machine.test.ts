import { describe, expect, it } from 'vitest';
import {
  initialState,
  InvalidTransitionError,
  isTerminal,
  step,
  type Protocol,
  type TwoPhaseAction,
  type TwoPhaseEvent,
  type TwoPhaseState,
  type Verdict,
  type Vote,
} from '../../src/protocol/commit-protocol.js';

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
        { type: 'ack', branchId: 'b2', verdict: 'commit' },
        { type: 'ack', branchId: 'b1', verdict: 'commit' },
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
    // b1 voted no, but a no may hide a prepare whose answer was lost: it hears the abort too.
    expect(delivered.actions).toEqual([{ type: 'deliver', decision: 'abort', branchIds: ['b1', 'b2'] }]);
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
    expect(run([{ type: 'ack', branchId: 'b2', verdict: 'commit' }], state).state.phase).toBe('committed');
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
 * Exhaustive exploration, for both protocols: every interleaving of client
 * requests, votes (yes, no, read-only), duplicated and late votes and acks
 * (including acks of an earlier round), a timeout and the durable decisions,
 * for up to three branches. The environment answers each action the machine
 * emitted at any later moment, possibly twice. The client may ask for a
 * one-phase commit instead, whose store answers its outcome (possibly twice).
 * Every reachable state is checked against the rules.
 */
describe.each(['2pc', '3pc'] as const)('%s state machine, every interleaving', (protocol: Protocol) => {
  interface World {
    readonly state: TwoPhaseState;
    readonly preparesSent: readonly string[];
    readonly logged: readonly Verdict[];
    readonly durable: readonly Verdict[];
    readonly delivered: Readonly<Record<string, readonly Verdict[]>>;
    readonly acked: Readonly<Record<string, readonly Verdict[]>>;
    readonly votes: Readonly<Record<string, Vote>>;
    readonly clientAsked: boolean;
    readonly timedOut: boolean;
    readonly ended: Verdict | null;
    /** The one-phase commit was sent to the store, and what the store answered. */
    readonly onePhaseSent: boolean;
    readonly onePhaseOutcome: 'commit' | 'abort' | null;
  }
  const yesBranches = (w: World): string[] => Object.entries(w.votes).filter(([, v]) => v === 'yes').map(([id]) => id);

  function applyActions(world: World, actions: readonly TwoPhaseAction[]): World {
    let w = world;
    for (const a of actions) {
      switch (a.type) {
        case 'commit-one-phase':
          expect(Object.keys(w.state.branches), 'one-phase commit of more than one branch').toHaveLength(1);
          expect(w.preparesSent, 'one-phase commit after a prepare').toEqual([]);
          expect(w.onePhaseSent, 'one-phase commit sent twice').toBe(false);
          w = { ...w, onePhaseSent: true };
          break;
        case 'prepare-branches':
          expect(w.onePhaseSent, 'prepare after a one-phase commit').toBe(false);
          for (const id of a.branchIds) expect(w.preparesSent, `prepare sent twice to ${id}`).not.toContain(id);
          w = { ...w, preparesSent: [...w.preparesSent, ...a.branchIds] };
          break;
        case 'log-decision': {
          expect(w.onePhaseSent, 'a decision logged for a one-phase commit').toBe(false);
          const first = w.logged.length === 0;
          if (first) {
            if (a.decision !== 'abort') {
              expect(a.decision, 'the forced decision').toBe(protocol === '3pc' ? 'precommit' : 'commit');
              expect(a.force, 'the commit (3PC: pre-commit) decision must be forced').toBe(true);
              for (const id of Object.keys(w.state.branches)) {
                expect(['yes', 'read-only'], `decided without a yes from ${id}`).toContain(w.votes[id]);
              }
            } else {
              expect(a.force, 'presumed abort: an abort is never forced').toBe(false);
            }
          } else {
            // Only 3PC logs twice: commit, after the pre-commit is durable and acknowledged by every yes branch.
            expect(protocol).toBe('3pc');
            expect(w.logged).toEqual(['precommit']);
            expect(a.decision).toBe('commit');
            expect(w.durable).toContain('precommit');
            for (const id of yesBranches(w)) expect(w.acked[id] ?? [], `commit logged before ${id} acknowledged pre-commit`).toContain('precommit');
          }
          w = { ...w, logged: [...w.logged, a.decision] };
          break;
        }
        case 'deliver':
          expect(w.onePhaseSent, 'phase 2 after a one-phase commit').toBe(false);
          expect(w.durable, `${a.decision} delivered before it was durable`).toContain(a.decision);
          if (a.decision === 'commit' && protocol === '3pc') expect(w.durable).toContain('precommit');
          for (const id of a.branchIds) {
            const before = w.delivered[id] ?? [];
            if (a.decision === 'abort') {
              expect(before.filter((v) => v !== 'abort'), `branch ${id} told abort after ${before.join(',')}`).toEqual([]);
              const inFlight = w.preparesSent.includes(id) && w.votes[id] === undefined;
              expect(inFlight, `abort sent to ${id} during its prepare`).toBe(false);
            } else {
              expect(before, `branch ${id} told ${a.decision} after abort`).not.toContain('abort');
              expect(w.votes[id], `${a.decision} sent to ${id} that did not vote yes`).toBe('yes');
            }
            expect(before, `${a.decision} delivered twice to ${id}`).not.toContain(a.decision);
          }
          w = {
            ...w,
            delivered: { ...w.delivered, ...Object.fromEntries(a.branchIds.map((id) => [id, [...(w.delivered[id] ?? []), a.decision]])) },
          };
          break;
        case 'log-end':
          expect(w.ended).toBeNull();
          // A one-phase commit ends with what its store did; any other with its logged decision.
          expect(a.outcome).toBe(w.onePhaseSent ? w.onePhaseOutcome : w.logged.at(-1));
          if (a.outcome === 'commit') for (const id of yesBranches(w)) expect(w.acked[id] ?? [], `ended before ${id} committed`).toContain('commit');
          w = { ...w, ended: a.outcome };
          break;
      }
    }
    return w;
  }

  function events(w: World): TwoPhaseEvent[] {
    const out: TwoPhaseEvent[] = [];
    if (!w.clientAsked) out.push({ type: 'commit' }, { type: 'commit', onePhase: true }, { type: 'prepare' }, { type: 'abort', reason: 'client' });
    if (w.state.phase === 'one-phase') out.push({ type: 'abort', reason: 'client' }, { type: 'commit' });
    if (w.onePhaseSent) {
      const [only] = Object.keys(w.state.branches);
      // The store answers once; a late copy repeats that answer.
      for (const outcome of w.onePhaseOutcome === null ? (['commit', 'abort'] as const) : [w.onePhaseOutcome]) {
        out.push({ type: 'one-phase-outcome', branchId: only as string, outcome });
      }
    }
    if (w.state.phase === 'prepared') out.push({ type: 'commit' }, { type: 'abort', reason: 'client' });
    if (!w.timedOut) out.push({ type: 'timeout' });
    for (const id of w.preparesSent) {
      if (w.votes[id] === undefined) {
        for (const vote of ['yes', 'no', 'read-only'] as const) out.push({ type: 'vote', branchId: id, vote });
      } else {
        out.push({ type: 'vote', branchId: id, vote: w.votes[id] === 'yes' ? 'no' : 'yes' }); // duplicate/late
      }
    }
    for (const v of w.logged) if (!w.durable.includes(v)) out.push({ type: 'decision-durable', decision: v });
    for (const [id, verdicts] of Object.entries(w.delivered)) for (const v of verdicts) out.push({ type: 'ack', branchId: id, verdict: v });
    // An operator may try to forget any branch at any time; the machine must refuse unless it aborts.
    for (const id of Object.keys(w.state.branches)) out.push({ type: 'forget', branchId: id });
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
    if (e.type === 'forget') {
      expect(w.state.decision, `forgot ${e.branchId} of a transaction not aborting`).toBe('abort');
      expect(w.logged.filter((v) => v !== 'abort'), 'forgot a branch after a commit or pre-commit decision').toEqual([]);
      expect(['aborting', 'aborted']).toContain(w.state.phase);
    }
    let n: World = { ...w, state: result.state };
    if (e.type === 'commit' || e.type === 'prepare' || e.type === 'abort') n = { ...n, clientAsked: true };
    if (e.type === 'timeout') n = { ...n, timedOut: true };
    if (e.type === 'vote' && w.votes[e.branchId] === undefined) n = { ...n, votes: { ...n.votes, [e.branchId]: e.vote } };
    if (e.type === 'decision-durable') n = { ...n, durable: [...n.durable, e.decision] };
    if (e.type === 'one-phase-outcome' && n.onePhaseOutcome === null) n = { ...n, onePhaseOutcome: e.outcome };
    if (e.type === 'ack' && !(n.acked[e.branchId] ?? []).includes(e.verdict)) {
      n = { ...n, acked: { ...n.acked, [e.branchId]: [...(n.acked[e.branchId] ?? []), e.verdict] } };
    }
    n = applyActions(n, result.actions);
    if (n.state.phase === 'committed') for (const id of yesBranches(n)) expect(n.delivered[id]).toContain('commit');
    if (n.onePhaseSent && isTerminal(n.state.phase)) {
      // Sent to the store, the outcome is the store's: no abort or timeout may override it.
      expect(n.state.phase, 'a one-phase commit ended otherwise than its store decided').toBe(n.onePhaseOutcome === 'commit' ? 'committed' : 'aborted');
    }
    return n;
  }

  for (const branchCount of [1, 2, 3]) {
    it(`keeps every rule in every reachable state with ${branchCount} branch(es)`, () => {
      let state = initialState(protocol);
      for (let i = 1; i <= branchCount; i++) state = step(state, { type: 'enlist', branchId: `b${i}` }).state;
      const start: World = {
        state,
        preparesSent: [],
        logged: [],
        durable: [],
        delivered: {},
        acked: {},
        votes: {},
        clientAsked: false,
        timedOut: false,
        ended: null,
        onePhaseSent: false,
        onePhaseOutcome: null,
      };
      const seen = new Set<string>();
      const stack: World[] = [start];
      let quiescent = 0;
      while (stack.length > 0) {
        const w = stack.pop() as World;
        const key = JSON.stringify(w);
        if (seen.has(key)) continue;
        seen.add(key);
        let moved = false;
        for (const e of events(w)) {
          const n = next(w, e);
          if (n !== undefined && JSON.stringify(n) !== key) {
            stack.push(n);
            moved = true;
          }
        }
        if (!moved) {
          quiescent++;
          // Quiescent: every message was answered, so the transaction has ended (or waits for the client).
          expect(['committed', 'aborted', 'active', 'prepared']).toContain(w.state.phase);
        }
      }
      if (branchCount === 1) expect([...seen].some((k) => k.includes('"onePhaseOutcome":"commit"')), 'one-phase commit explored').toBe(true);
      expect(seen.size).toBeGreaterThan(10);
      expect(quiescent).toBeGreaterThan(0);
    });
  }
});

describe('3PC specifics', () => {
  it('forces a pre-commit, delivers it, then logs commit unforced and delivers do-commit', () => {
    let s = initialState('3pc');
    const actions: TwoPhaseAction[] = [];
    const events: TwoPhaseEvent[] = [
      { type: 'enlist', branchId: 'b1' },
      { type: 'enlist', branchId: 'b2' },
      { type: 'commit' },
      { type: 'vote', branchId: 'b1', vote: 'yes' },
      { type: 'vote', branchId: 'b2', vote: 'yes' },
      { type: 'decision-durable', decision: 'precommit' },
      { type: 'ack', branchId: 'b1', verdict: 'precommit' },
      { type: 'ack', branchId: 'b2', verdict: 'precommit' },
      { type: 'decision-durable', decision: 'commit' },
      { type: 'ack', branchId: 'b1', verdict: 'commit' },
      { type: 'ack', branchId: 'b2', verdict: 'commit' },
    ];
    const phases: string[] = [];
    for (const e of events) {
      const r = step(s, e);
      s = r.state;
      phases.push(s.phase);
      actions.push(...r.actions);
    }
    expect(actions).toEqual([
      { type: 'prepare-branches', branchIds: ['b1', 'b2'] },
      { type: 'log-decision', decision: 'precommit', force: true },
      { type: 'deliver', decision: 'precommit', branchIds: ['b1', 'b2'] },
      { type: 'log-decision', decision: 'commit', force: false },
      { type: 'deliver', decision: 'commit', branchIds: ['b1', 'b2'] },
      { type: 'log-end', outcome: 'commit' },
    ]);
    expect(phases).toContain('precommitted');
    expect(s.phase).toBe('committed');
  });

  it('refuses an abort once the pre-commit decision was made', () => {
    let s = initialState('3pc');
    for (const e of [
      { type: 'enlist', branchId: 'b1' },
      { type: 'commit' },
      { type: 'vote', branchId: 'b1', vote: 'yes' },
      { type: 'decision-durable', decision: 'precommit' },
    ] as TwoPhaseEvent[]) {
      s = step(s, e).state;
    }
    expect(s.phase).toBe('precommitted');
    expect(() => step(s, { type: 'abort', reason: 'x' })).toThrow(InvalidTransitionError);
    expect(step(s, { type: 'timeout' }).actions).toEqual([]);
  });
});

describe('one-phase commit', () => {
  const one: TwoPhaseEvent[] = [{ type: 'enlist', branchId: 'b1' }];

  for (const protocol of ['2pc', '3pc'] as const) {
    it(`${protocol}: a lone branch commits in one step, with no prepare and no decision record`, () => {
      const started = run([...one, { type: 'commit', onePhase: true }], initialState(protocol));
      expect(started.state.phase).toBe('one-phase');
      expect(started.actions).toEqual([{ type: 'commit-one-phase', branchId: 'b1' }]);
      const done = run([{ type: 'one-phase-outcome', branchId: 'b1', outcome: 'commit' }], started.state);
      expect(done.state).toMatchObject({ phase: 'committed', decision: 'commit', branches: { b1: { phase: 'committed' } } });
      expect(done.actions).toEqual([{ type: 'log-end', outcome: 'commit' }]);
    });
  }

  it('the store rolling the work back ends the transaction aborted, with its reason', () => {
    const { state, actions } = run([...one, { type: 'commit', onePhase: true }, { type: 'one-phase-outcome', branchId: 'b1', outcome: 'abort', reason: 'deferred check failed' }]);
    expect(state).toMatchObject({ phase: 'aborted', decision: 'abort', abortReason: 'deferred check failed', branches: { b1: { phase: 'aborted' } } });
    expect(actions.filter((a) => a.type === 'deliver' || a.type === 'log-decision')).toEqual([]);
  });

  it('is refused for two branches whatever the runner offers: they prepare and the decision is forced', () => {
    const { state, actions } = run([...enlistTwo, { type: 'commit', onePhase: true }]);
    expect(state.phase).toBe('preparing');
    expect(actions).toEqual([{ type: 'prepare-branches', branchIds: ['b1', 'b2'] }]);
  });

  it('is not offered: the lone branch runs the full protocol', () => {
    const { state, actions } = run([...one, { type: 'commit' }]);
    expect(state.phase).toBe('preparing');
    expect(actions).toEqual([{ type: 'prepare-branches', branchIds: ['b1'] }]);
  });

  it('while the store decides: a timeout changes nothing, an abort is refused, a repeated commit is a no-op', () => {
    const { state } = run([...one, { type: 'commit', onePhase: true }]);
    expect(step(state, { type: 'timeout' })).toEqual({ state, actions: [] });
    expect(step(state, { type: 'commit' })).toEqual({ state, actions: [] });
    expect(() => step(state, { type: 'abort', reason: 'client' })).toThrow(InvalidTransitionError);
    expect(() => step(state, { type: 'decision-durable', decision: 'commit' })).toThrow(InvalidTransitionError);
    expect(() => step(state, { type: 'ack', branchId: 'b1', verdict: 'commit' })).toThrow(InvalidTransitionError);
  });

  it('an outcome outside a one-phase commit is rejected; a repeated one after the end is a no-op', () => {
    const active = run(one).state;
    expect(() => step(active, { type: 'one-phase-outcome', branchId: 'b1', outcome: 'commit' })).toThrow(InvalidTransitionError);
    const done = run([...one, { type: 'commit', onePhase: true }, { type: 'one-phase-outcome', branchId: 'b1', outcome: 'commit' }]).state;
    expect(step(done, { type: 'one-phase-outcome', branchId: 'b1', outcome: 'commit' })).toEqual({ state: done, actions: [] });
  });
});
