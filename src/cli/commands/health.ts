/** `tcx health` and `tcx cluster`. */
import type { Command } from '../command.js';
import { EXIT } from '../exit-codes.js';
import { json, keyValues, table } from '../output.js';

export const health: Command = {
  words: ['health'],
  positionals: [],
  options: {},
  summary: 'the coordinator\'s health and counters (exit 4 when unhealthy)',
  synopsis: '',
  details: ['Exits 0 when the coordinator is healthy, 4 when it answers unhealthy (its write-ahead log failed).'],
  async run(ctx) {
    const h = await ctx.client.getHealth();
    if (ctx.json) {
      ctx.out.stdout(json(h));
    } else {
      const sweep = h.lastRecoverySweep;
      ctx.out.stdout(
        keyValues([
          ['status', h.status],
          ...(h.reason === undefined ? [] : [['reason', h.reason] as const]),
          ['coordinator id', h.coordinatorId],
          ['live transactions', h.liveTransactions],
          ['active transactions', h.activeTransactions],
          ['in doubt', h.inDoubtTransactions],
          ['participants', h.participants],
          ['retained transactions', h.retainedTransactions],
          ['log', `${h.log.segments} segment(s), ${h.log.appendedRecords} records, ${h.log.fsyncs} fsyncs, ${h.log.compactions} compactions`],
          [
            'last recovery sweep',
            sweep === undefined
              ? undefined
              : `${sweep.at}: ${sweep.committed} committed, ${sweep.rolledBack} rolled back, ${sweep.failed} failed` +
                (sweep.unreachable.length === 0 ? '' : `, unreachable: ${sweep.unreachable.join(', ')}`),
          ],
        ]),
      );
    }
    return h.status === 'ok' ? EXIT.OK : EXIT.ATTENTION;
  },
};

export const cluster: Command = {
  words: ['cluster'],
  positionals: [],
  options: {},
  summary: 'the instances sharing the coordinator\'s log, their leases and adopted ids',
  synopsis: '',
  details: ['With the embedded file log the mode is `single` and there are no leases.'],
  async run(ctx) {
    const c = await ctx.client.getCluster();
    if (ctx.json) {
      ctx.out.stdout(json(c));
      return EXIT.OK;
    }
    ctx.out.stdout(keyValues([['mode', c.mode], ['instance', c.instance], ['lease ms', c.leaseMs], ['adopted', c.adopted.join(', ')]]));
    if (c.leases.length > 0) {
      ctx.out.stdout(
        '\n' +
          table(
            ['COORDINATOR', 'HOLDER', 'EPOCH', 'EXPIRES', 'EXPIRED', 'WANTED BY', 'SETTLED'],
            c.leases.map((l) => [l.coordinatorId, l.holder, l.epoch, l.expiresAt, l.expired, l.wantedBy, l.settled]),
          ),
      );
    }
    return EXIT.OK;
  },
};
