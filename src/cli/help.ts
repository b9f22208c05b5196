/** The help texts of `tcx`: the whole tool, a command group, one command. */
import type { Command } from './command.js';
import { EXIT_CODES_HELP } from './exit-codes.js';

export const DEFAULT_URL = 'http://127.0.0.1:7070';
export const DEFAULT_TIMEOUT_MS = 30_000;

const GLOBAL_HELP = [
  'Global options (anywhere on the line):',
  `  --url URL     the coordinator (default: $TCX_URL, else ${DEFAULT_URL})`,
  '  --token T     bearer token (default: $TCX_TOKEN; prefer the variable, a command line is visible to other users)',
  `  --timeout MS  deadline of each request (default ${DEFAULT_TIMEOUT_MS})`,
  '  --json        one JSON document on stdout instead of tables',
  '  -h, --help    this help (also: tcx help COMMAND, tcx COMMAND --help)',
];

function usageLine(c: Command): string {
  return ['tcx', ...c.words, ...c.positionals, c.synopsis].filter((p) => p !== '').join(' ');
}

function commandList(commands: readonly Command[]): string[] {
  const lines = commands.map((c) => [[...c.words, ...c.positionals].join(' '), c.summary] as const);
  const width = Math.max(...lines.map(([l]) => l.length));
  return lines.map(([l, s]) => `  ${l.padEnd(width)}  ${s}`);
}

export function toolHelp(commands: readonly Command[]): string {
  return [
    'tcx: the command line of the transaction coordinator (2PC/3PC over Postgres, Redis, HTTP services)',
    '',
    'Usage: tcx COMMAND [ARGUMENTS] [OPTIONS]',
    '',
    'Commands:',
    ...commandList(commands),
    '',
    ...GLOBAL_HELP,
    '',
    ...EXIT_CODES_HELP,
    '',
  ].join('\n');
}

export function groupHelp(group: string, commands: readonly Command[]): string {
  return [`Usage: tcx ${group} SUBCOMMAND ...`, '', 'Subcommands:', ...commandList(commands), '', `Run tcx ${group} SUBCOMMAND --help for its options.`, ''].join('\n');
}

export function commandHelp(c: Command): string {
  return [
    `Usage: ${usageLine(c)} [global options]`,
    '',
    `${c.summary[0]?.toUpperCase() ?? ''}${c.summary.slice(1)}.`,
    ...(c.details.length === 0 ? [] : ['', ...c.details.map((d) => `  ${d}`)]),
    '',
    ...GLOBAL_HELP,
    '',
    'Exit codes: 0 ok, 1 API error, 2 usage error, 3 cannot reach the coordinator, 4 needs attention (tcx --help).',
    '',
  ].join('\n');
}
