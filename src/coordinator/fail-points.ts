/**
 * Named fail points for crash tests. When the environment variable
 * TCX_FAIL_POINT names a point (optionally `name:N` to fire on the N-th hit),
 * reaching it kills the process with SIGKILL — no cleanup, no flush, exactly
 * like a power cut for everything not yet fsynced.
 *
 * Points: after-prepare (a branch voted yes), after-decision-logged (the
 * forced decision — 3PC: the pre-commit — is durable, nothing sent yet),
 * between-precommits (3PC: one pre-commit acknowledged), before-commit-record
 * (3PC: every pre-commit acknowledged, commit not yet logged), between-commits
 * (one commit acknowledged), before-end-record, before-one-phase-commit (a lone branch's
 * work has run, its one-step commit not yet sent), one-phase-answer-lost (its answer was
 * lost and the evidence is durable, the store not asked yet), after-one-phase-commit (the
 * store answered its outcome, nothing logged yet). Unset in production, hit() is a map
 * lookup.
 */

export const FAIL_POINTS = [
  'after-prepare',
  'after-decision-logged',
  'between-precommits',
  'before-commit-record',
  'between-commits',
  'before-end-record',
  'before-one-phase-commit',
  'one-phase-answer-lost',
  'after-one-phase-commit',
] as const;
export type FailPoint = (typeof FAIL_POINTS)[number];

interface Armed {
  remaining: number;
}

const armed = new Map<string, Armed>();

export function armFailPoints(spec: string | undefined): void {
  armed.clear();
  if (spec === undefined || spec.trim() === '') return;
  for (const part of spec.split(',')) {
    const [name, count] = part.trim().split(':');
    if (name === undefined || name === '') continue;
    armed.set(name, { remaining: count === undefined ? 1 : Math.max(1, Number(count)) });
  }
}

export function hitFailPoint(point: FailPoint): void {
  const a = armed.get(point);
  if (a === undefined) return;
  a.remaining -= 1;
  if (a.remaining <= 0) process.kill(process.pid, 'SIGKILL');
}
