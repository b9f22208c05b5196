/** The exit codes of `tcx`: scripts may rely on them (also listed by `tcx --help` and the README). */
export const EXIT = {
  /** Done. */
  OK: 0,
  /** The coordinator answered with an error (4xx/5xx): `error CODE: message` on stderr. */
  API_ERROR: 1,
  /** The command line is wrong: unknown command or option, missing or bad argument. */
  USAGE: 2,
  /** The coordinator cannot be reached: refused, unknown host, or no answer within --timeout. */
  UNREACHABLE: 3,
  /** It answered, and the answer needs attention: unhealthy (`health`), or a transaction in doubt (`transactions show|retry`). */
  ATTENTION: 4,
} as const;

export const EXIT_CODES_HELP = [
  'Exit codes:',
  '  0  ok',
  '  1  the coordinator answered with an error (4xx/5xx); stderr: error CODE: message',
  '  2  usage error (unknown command or option, missing or bad argument)',
  '  3  cannot reach the coordinator (connection refused, unknown host, no answer within --timeout)',
  '  4  answered, but needs attention: `health` says unhealthy, or `transactions show|retry`',
  '     found the transaction in doubt (decided, not yet acknowledged by every participant)',
];
