/** `tcx prepared NAME` and `tcx resolve NAME GID`: the operator's view of prepared branches. */
import type { ResolutionOutcome } from '../../client/index.js';
import { oneOf, requiredOption, stringOption, type Command } from '../command.js';
import { EXIT } from '../exit-codes.js';
import { json, keyValues, table } from '../output.js';

const OUTCOMES: readonly ResolutionOutcome[] = ['commit', 'abort'];

export const prepared: Command = {
  words: ['prepared'],
  positionals: ['NAME'],
  options: { 'coordinator-id': { type: 'string' } },
  summary: 'the branches prepared on a participant, with what the log says of each',
  synopsis: '[--coordinator-id ID]',
  details: [
    '--coordinator-id ID  list another coordinator id\'s branches (an old instance, a lost data directory)',
    'KNOWN no and LIVE no under another id: nobody will resolve the branch but `tcx resolve`.',
  ],
  async run(ctx, { args, values }) {
    const coordinatorId = stringOption(values, 'coordinator-id');
    const list = await ctx.client.listPreparedBranches(args[0] as string, coordinatorId === undefined ? {} : { coordinatorId });
    if (ctx.json) ctx.out.stdout(json(list));
    else if (list.branches.length === 0) ctx.out.stdout(`no prepared branches on ${list.participant}\n`);
    else
      ctx.out.stdout(
        table(
          ['GID', 'TRANSACTION', 'BRANCH', 'KNOWN', 'DECISION', 'OUTCOME', 'LIVE'],
          list.branches.map((b) => [b.gid, b.transactionId, b.branchId, b.log.known, b.log.decision, b.log.outcome, b.log.live]),
        ),
      );
    return EXIT.OK;
  },
};

export const resolve: Command = {
  words: ['resolve'],
  positionals: ['NAME', 'GID'],
  options: { outcome: { type: 'string' }, reason: { type: 'string' } },
  summary: 'commit or roll back one prepared branch by hand (admin token, audited)',
  synopsis: '--outcome commit|abort --reason R',
  details: [
    '--outcome commit|abort  COMMIT PREPARED or ROLLBACK PREPARED (or the kind\'s equivalent)',
    '--reason R              why: a ticket and the evidence (kept in the log\'s audit record)',
    'Establish the outcome first (the transaction\'s other branches). Refused when it contradicts',
    'the log (RESOLUTION_CONTRADICTS_LOG) or while a running transaction drives the branch.',
    'After PARTICIPANT_UNREACHABLE the resolution is recorded: repeat the same command.',
  ],
  async run(ctx, { args, values }) {
    const outcome = oneOf(requiredOption(values, 'outcome'), OUTCOMES, '--outcome');
    const reason = requiredOption(values, 'reason');
    const r = await ctx.client.resolvePreparedBranch(args[0] as string, args[1] as string, { outcome, reason });
    ctx.out.stdout(
      ctx.json
        ? json(r)
        : keyValues([
            ['gid', r.gid],
            ['participant', r.participant],
            ['outcome', r.outcome],
            ['logged decision', r.loggedDecision],
            ['resolved', r.resolvedAt],
          ]),
    );
    return EXIT.OK;
  },
};
