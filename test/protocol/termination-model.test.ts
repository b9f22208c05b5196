/**
 * A model of the whole system — the real commit-protocol machine as the
 * coordinator, its log, a network that loses, delays and duplicates messages,
 * participants, and a coordinator crash at any step followed by recovery —
 * explored exhaustively. Each reachable state is checked for atomicity: no
 * two participants reach different outcomes, and nothing commits unless every
 * participant voted yes.
 *
 * Participants are either passive (Postgres, Redis: they never decide on their
 * own) or active (HTTP services built with src/participant-kit: in 3PC they
 * run the timeouts — pre-committed → commit; uncertain → ask the coordinator,
 * and if it cannot answer, wait). The textbook rule "uncertain → abort" when
 * the coordinator cannot be reached is modelled too: the model must find the
 * execution where it breaks atomicity, which is why the kit does not use it
 * by default (README, "Two-phase and three-phase commit").
 */
import { describe, expect, it } from 'vitest';
import {
  initialState,
  step,
  type Protocol,
  type TwoPhaseAction,
  type TwoPhaseEvent,
  type TwoPhaseState,
  type Verdict,
} from '../../src/protocol/commit-protocol.js';

type Kind = 'passive' | 'active';
type PState = 'working' | 'uncertain' | 'precommitted' | 'committed' | 'aborted';
type Request = 'prepare' | Verdict;
type UnreachablePolicy = 'wait' | 'abort';

interface Coordinator {
  readonly up: boolean;
  readonly state: TwoPhaseState | null; // null once ended or while down
  /** Log records handed to the log but not yet durable (lost by a crash). */
  readonly pendingLog: readonly Verdict[];
  readonly durableLog: readonly Verdict[];
  readonly crashes: number;
  readonly timedOut: boolean;
  readonly ended: boolean;
}

interface World {
  readonly coordinator: Coordinator;
  readonly participants: readonly PState[];
  readonly votes: readonly ('yes' | 'no' | null)[];
  /** Requests in flight (each may be delivered any number of times until acknowledged). */
  readonly requests: readonly (readonly [number, Request])[];
  readonly clientCommitted: boolean;
}

interface Options {
  readonly protocol: Protocol;
  readonly kinds: readonly Kind[];
  readonly onUnreachableUncertain: UnreachablePolicy;
  readonly maxCrashes: number;
}

const branchId = (i: number): string => `b${i + 1}`;
const indexOf = (id: string): number => Number(id.slice(1)) - 1;

function runActions(w: World, actions: readonly TwoPhaseAction[]): World {
  let world = w;
  for (const a of actions) {
    const c = world.coordinator;
    switch (a.type) {
      case 'prepare-branches':
        world = { ...world, requests: [...world.requests, ...a.branchIds.map((id) => [indexOf(id), 'prepare'] as const)] };
        break;
      case 'log-decision':
        // Forced: stays pending until the 'flush' event; unforced: the runner goes on at once.
        world = { ...world, coordinator: { ...c, pendingLog: [...c.pendingLog, a.decision] } };
        if (!a.force) world = applyCoordinatorEvent(world, { type: 'decision-durable', decision: a.decision });
        break;
      case 'deliver':
        world = { ...world, requests: [...world.requests, ...a.branchIds.map((id) => [indexOf(id), a.decision] as const)] };
        break;
      case 'log-end':
        world = { ...world, coordinator: { ...world.coordinator, state: null, ended: true } };
        break;
    }
  }
  return world;
}

function applyCoordinatorEvent(w: World, e: TwoPhaseEvent): World {
  const s = w.coordinator.state;
  if (s === null) return w;
  let r;
  try {
    r = step(s, e);
  } catch {
    return w; // a rejected transition changes nothing (the runner logs it)
  }
  return runActions({ ...w, coordinator: { ...w.coordinator, state: r.state } }, r.actions);
}

/** What the coordinator answers to GET /v1/transactions/{id}, or undefined when it is down. */
function inquiry(c: Coordinator): 'commit' | 'abort' | 'undecided' | undefined {
  if (!c.up) return undefined;
  const decided = [...c.durableLog, ...c.pendingLog];
  if (c.state === null) {
    if (decided.includes('precommit') || decided.includes('commit')) return 'commit';
    return 'abort'; // ended with abort, or no record at all (404): presumed abort
  }
  const p = c.state.phase;
  if (p === 'precommitted' || p === 'committing' || p === 'committed') return 'commit';
  if (p === 'aborting' || p === 'aborted' || (p === 'deciding' && c.state.decision === 'abort')) return 'abort';
  return 'undecided';
}

/** Recovery as TransactionManager.resumeUnfinished does it. */
function recover(w: World, o: Options): World {
  const durable = w.coordinator.durableLog;
  const base: Coordinator = { ...w.coordinator, up: true, pendingLog: [], state: null };
  if (w.coordinator.ended) return { ...w, coordinator: base };
  const commit = durable.includes('precommit') || durable.includes('commit');
  const branches = Object.fromEntries(
    o.kinds.map((_, i) => [branchId(i), { phase: commit && o.protocol === '3pc' ? ('precommitted' as const) : ('prepared' as const) }]),
  );
  const state: TwoPhaseState = {
    protocol: o.protocol,
    phase: commit && o.protocol === '3pc' ? 'precommitted' : 'deciding',
    branches,
    commitRequested: commit,
    decision: commit ? 'commit' : 'abort',
    abortReason: commit ? undefined : 'presumed abort',
  };
  const world: World = { ...w, requests: [], coordinator: { ...base, state } };
  return applyCoordinatorEvent(world, { type: 'decision-durable', decision: commit ? 'commit' : 'abort' });
}

function participantReceives(w: World, i: number, request: Request, vote?: 'yes' | 'no'): World {
  const state = w.participants[i] as PState;
  let next: PState = state;
  let reply: TwoPhaseEvent | undefined;
  const votes = [...w.votes];
  switch (request) {
    case 'prepare':
      if (state === 'working') {
        next = vote === 'yes' ? 'uncertain' : 'aborted';
        votes[i] = vote ?? 'no';
      }
      reply = { type: 'vote', branchId: branchId(i), vote: state === 'working' ? (vote ?? 'no') : state === 'aborted' ? 'no' : 'yes' };
      break;
    case 'precommit':
      if (state === 'uncertain') next = 'precommitted';
      if (state === 'aborted') return w; // the kit answers 409: no ack, the coordinator retries
      reply = { type: 'ack', branchId: branchId(i), verdict: 'precommit' };
      break;
    case 'commit':
      if (state === 'aborted') return w; // 409, retried: shows up as in doubt
      next = 'committed';
      reply = { type: 'ack', branchId: branchId(i), verdict: 'commit' };
      break;
    case 'abort':
      if (state === 'committed') return w;
      next = 'aborted';
      reply = { type: 'ack', branchId: branchId(i), verdict: 'abort' };
      break;
  }
  const participants = [...w.participants];
  participants[i] = next;
  let world: World = { ...w, participants, votes };
  // The reply reaches the coordinator only if it is up (else it is lost; a retry repeats the request).
  if (world.coordinator.up && reply !== undefined) {
    world = {
      ...world,
      requests: world.requests.filter(([j, r]) => !(j === i && r === request)),
    };
    world = applyCoordinatorEvent(world, reply);
  }
  return world;
}

function successors(w: World, o: Options): World[] {
  const out: World[] = [];
  const c = w.coordinator;
  if (c.up) {
    if (!w.clientCommitted) out.push(applyCoordinatorEvent({ ...w, clientCommitted: true }, { type: 'commit' }));
    if (!c.timedOut && c.state !== null) out.push(applyCoordinatorEvent({ ...w, coordinator: { ...c, timedOut: true } }, { type: 'timeout' }));
    for (const v of c.pendingLog) {
      const flushed: World = {
        ...w,
        coordinator: { ...c, pendingLog: c.pendingLog.filter((x) => x !== v), durableLog: [...c.durableLog, v] },
      };
      // A forced record's writer waits for this fsync; an unforced one went on already.
      const forced = v === 'precommit' || (v === 'commit' && o.protocol === '2pc');
      out.push(forced ? applyCoordinatorEvent(flushed, { type: 'decision-durable', decision: v }) : flushed);
    }
    if (c.crashes < o.maxCrashes) {
      out.push({ ...w, coordinator: { ...c, up: false, state: null, pendingLog: [], crashes: c.crashes + 1 } });
    }
  } else {
    out.push(recover(w, o));
  }
  // Deliver any request in flight (again: duplicates), to a participant that may vote either way.
  const seen = new Set<string>();
  for (const [i, r] of w.requests) {
    const key = `${i}:${r}`;
    if (seen.has(key)) continue;
    seen.add(key);
    if (r === 'prepare' && w.participants[i] === 'working') {
      out.push(participantReceives(w, i, r, 'yes'), participantReceives(w, i, r, 'no'));
    } else {
      out.push(participantReceives(w, i, r));
    }
  }
  // Active participants' 3PC timeouts, with the inquiry first.
  if (o.protocol === '3pc') {
    o.kinds.forEach((kind, i) => {
      const s = w.participants[i];
      if (kind !== 'active' || (s !== 'uncertain' && s !== 'precommitted')) return;
      const answer = inquiry(c);
      let decided: PState | undefined;
      if (answer === 'commit') decided = 'committed';
      else if (answer === 'abort') decided = 'aborted';
      else if (answer === undefined) {
        if (s === 'precommitted') decided = 'committed';
        else if (o.onUnreachableUncertain === 'abort') decided = 'aborted';
      }
      if (decided !== undefined) {
        const participants = [...w.participants];
        participants[i] = decided;
        out.push({ ...w, participants });
      }
    });
  }
  return out;
}

function violation(w: World): string | undefined {
  const committed = w.participants.some((p) => p === 'committed');
  const aborted = w.participants.some((p) => p === 'aborted');
  if (committed && aborted) return `participants disagree: ${w.participants.join(', ')}`;
  if (committed && w.votes.some((v) => v !== 'yes')) return `committed without every yes: votes ${w.votes.join(', ')}`;
  return undefined;
}

function explore(o: Options): { states: number; counterexample?: string } {
  let state = initialState(o.protocol);
  o.kinds.forEach((_, i) => {
    state = step(state, { type: 'enlist', branchId: branchId(i) }).state;
  });
  const start: World = {
    coordinator: { up: true, state, pendingLog: [], durableLog: [], crashes: 0, timedOut: false, ended: false },
    participants: o.kinds.map(() => 'working'),
    votes: o.kinds.map(() => null),
    requests: [],
    clientCommitted: false,
  };
  const seen = new Set<string>();
  const stack: World[] = [start];
  while (stack.length > 0) {
    const w = stack.pop() as World;
    const key = JSON.stringify(w);
    if (seen.has(key)) continue;
    seen.add(key);
    const bad = violation(w);
    if (bad !== undefined) return { states: seen.size, counterexample: bad };
    for (const n of successors(w, o)) stack.push(n);
    if (seen.size > 2_000_000) throw new Error('state space larger than expected');
  }
  return { states: seen.size };
}

describe('termination model: every schedule of votes, lost and duplicated messages, timeouts and a coordinator crash', () => {
  const cases: [Protocol, Kind[]][] = [
    ['2pc', ['passive', 'passive']],
    ['2pc', ['active', 'passive']],
    ['3pc', ['passive', 'passive']],
    ['3pc', ['active', 'passive']],
    ['3pc', ['active', 'active']],
    ['2pc', ['active', 'passive', 'passive']],
    ['3pc', ['active', 'active', 'passive']],
  ];
  for (const [protocol, kinds] of cases) {
    it(`${protocol} with ${kinds.join(' + ')} participants never disagrees, across two coordinator crashes`, () => {
      const result = explore({ protocol, kinds, onUnreachableUncertain: 'wait', maxCrashes: 2 });
      expect(result.counterexample).toBeUndefined();
      expect(result.states).toBeGreaterThan(100);
    });
  }

  it('finds the execution where the textbook rule "uncertain → abort when the coordinator is unreachable" breaks atomicity', () => {
    const result = explore({ protocol: '3pc', kinds: ['active', 'active'], onUnreachableUncertain: 'abort', maxCrashes: 1 });
    expect(result.counterexample).toMatch(/disagree/);
  });
});
