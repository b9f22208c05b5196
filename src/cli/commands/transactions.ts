/** `tcx transactions list|show|retry`. */
import type { TransactionFilters, TransactionPage, TransactionView } from '../../client/index.js';
import { booleanOption, oneOf, positiveIntegerOption, stringOption, type Command, type Values } from '../command.js';
import { EXIT } from '../exit-codes.js';
import { json, keyValues, table } from '../output.js';

type ListState = NonNullable<TransactionFilters['state']>;
/** The `state` filter's values (listTransactions in openapi.yaml); typecheck fails when the spec adds one. */
const STATES = ['in-doubt', 'active', 'preparing', 'prepared', 'deciding', 'precommitted', 'committing', 'aborting', 'committed', 'aborted', 'one-phase'] as const satisfies readonly ListState[];
const EVERY_STATE_LISTED: Exclude<ListState, (typeof STATES)[number]> extends never ? true : never = true;
void EVERY_STATE_LISTED;

function participantsOf(t: TransactionView): string {
  return [...new Set(t.branches.map((b) => b.participant))].join(',');
}

/** The view: its fields, then one line per branch. */
function describe(t: TransactionView): string {
  const head = keyValues([
    ['id', t.id],
    ['protocol', t.protocol],
    ['state', t.state],
    ['decision', t.decision],
    ['in doubt', t.inDoubt],
    ...(t.reason === undefined ? [] : [['reason', t.reason] as const]),
    ['timeout ms', t.timeoutMs],
    ['created', t.createdAt],
    ['expires', t.expiresAt],
    ['decided', t.decidedAt],
    ['ended', t.endedAt],
    ...(t.onePhase === true ? [['one phase', true] as const] : []),
  ]);
  if (t.branches.length === 0) return `${head}\nno branches\n`;
  const branches = table(
    ['BRANCH', 'PARTICIPANT', 'KIND', 'STATE', 'VOTE', 'ATTEMPTS', 'LAST ERROR'],
    t.branches.map((b) => [
      b.branchId,
      b.participant,
      b.kind,
      b.forgotten === undefined ? b.state : `${b.state} (forgotten: ${b.forgotten.reason})`,
      b.vote,
      b.attempts,
      b.lastError ?? b.reason,
    ]),
  );
  return `${head}\n${branches}`;
}

function filters(values: Values): TransactionFilters {
  const state = stringOption(values, 'state');
  const participant = stringOption(values, 'participant');
  const since = stringOption(values, 'since');
  const limit = positiveIntegerOption(values, 'limit');
  return {
    ...(state === undefined ? {} : { state: oneOf(state, STATES, '--state') }),
    ...(participant === undefined ? {} : { participant }),
    ...(since === undefined ? {} : { since }),
    ...(limit === undefined ? {} : { limit }),
  };
}

export const transactionsList: Command = {
  words: ['transactions', 'list'],
  positionals: [],
  options: {
    state: { type: 'string' },
    participant: { type: 'string' },
    since: { type: 'string' },
    limit: { type: 'string' },
    cursor: { type: 'string' },
    all: { type: 'boolean' },
  },
  summary: 'running and retained finished transactions, newest first',
  synopsis: '[--state S] [--participant P] [--since T] [--limit N] [--cursor C | --all]',
  details: [
    `--state S        one of ${STATES.slice(1).join(', ')};`,
    '                 or in-doubt: decided but not yet acknowledged by every participant',
    '--participant P  only transactions with a branch on P',
    '--since T        only transactions created at or after T (ISO 8601, e.g. 2025-01-14T09:00:00Z)',
    '--limit N        page size (1-1000; the coordinator\'s default is 100)',
    '--cursor C       the page after the one that printed C (`more:` on stderr)',
    '--all            every page (with --json: one document holding every transaction)',
  ],
  async run(ctx, { values }) {
    const wanted = filters(values);
    const cursor = stringOption(values, 'cursor');
    let page: TransactionPage;
    if (booleanOption(values, 'all')) {
      const transactions: TransactionView[] = [];
      for await (const t of ctx.client.iterateTransactions(wanted)) transactions.push(t);
      page = { transactions, nextCursor: null };
    } else {
      page = await ctx.client.listTransactions({ ...wanted, ...(cursor === undefined ? {} : { cursor }) });
    }
    if (page.unreachable !== undefined && page.unreachable.length > 0) {
      ctx.out.stderr(`warning: instances that did not answer (their transactions may be missing): ${page.unreachable.join(', ')}\n`);
    }
    if (ctx.json) {
      ctx.out.stdout(json(page));
    } else if (page.transactions.length === 0) {
      ctx.out.stdout('no transactions\n');
    } else {
      ctx.out.stdout(
        table(
          ['ID', 'STATE', 'PROTOCOL', 'DECISION', 'IN DOUBT', 'CREATED', 'PARTICIPANTS'],
          page.transactions.map((t) => [t.id, t.state, t.protocol, t.decision, t.inDoubt, t.createdAt, participantsOf(t)]),
        ),
      );
    }
    if (page.nextCursor !== null) ctx.out.stderr(`more: --cursor ${page.nextCursor} (or --all)\n`);
    return EXIT.OK;
  },
};

export const transactionsShow: Command = {
  words: ['transactions', 'show'],
  positionals: ['ID'],
  options: {},
  summary: 'one transaction and its branches (exit 4 when it is in doubt)',
  synopsis: '',
  details: ['Exits 4 when the transaction is in doubt: decided, but not yet acknowledged by every participant.'],
  async run(ctx, { args }) {
    const t = await ctx.client.getTransaction(args[0] as string);
    ctx.out.stdout(ctx.json ? json(t) : describe(t));
    return t.inDoubt ? EXIT.ATTENTION : EXIT.OK;
  },
};

export const transactionsRetry: Command = {
  words: ['transactions', 'retry'],
  positionals: ['ID'],
  options: {},
  summary: 'retry an in-doubt transaction\'s deliveries now (exit 4 while still in doubt)',
  synopsis: '',
  details: [
    'Every pending phase-2 delivery is tried once more at once; the decision does not change.',
    'Prints the transaction after that attempt; exits 4 when it is still in doubt.',
  ],
  async run(ctx, { args }) {
    const t = await ctx.client.retryTransactionDelivery(args[0] as string);
    ctx.out.stdout(ctx.json ? json(t) : describe(t));
    return t.inDoubt ? EXIT.ATTENTION : EXIT.OK;
  },
};
