/**
 * `tcx ARGS`: finds the command, parses its options with node:util parseArgs (strict: an
 * unknown option is a usage error), builds the client from --url/--token/--timeout (or
 * TCX_URL, TCX_TOKEN), runs the command and turns what went wrong into the exit codes of
 * exit-codes.ts. Two passes: a tolerant one over every option any command knows finds the
 * command's words wherever options stand; a strict one with that command's options checks.
 */
import { parseArgs } from 'node:util';
import { TcxApiError, TcxClient, TcxConnectionError, TcxResponseError } from '../client/index.js';
import { UsageError, positiveIntegerOption, stringOption, type Command, type Options, type Values } from './command.js';
import { cluster, health } from './commands/health.js';
import { prepared, resolve } from './commands/operator.js';
import { participantsAdd, participantsList, participantsRemove, participantsShow } from './commands/participants.js';
import { transactionsList, transactionsRetry, transactionsShow } from './commands/transactions.js';
import { EXIT } from './exit-codes.js';
import { DEFAULT_TIMEOUT_MS, DEFAULT_URL, commandHelp, groupHelp, toolHelp } from './help.js';
import type { Output } from './output.js';

export const COMMANDS: readonly Command[] = [
  health,
  cluster,
  participantsList,
  participantsShow,
  participantsAdd,
  participantsRemove,
  transactionsList,
  transactionsShow,
  transactionsRetry,
  prepared,
  resolve,
];

const GLOBAL_OPTIONS: Options = {
  url: { type: 'string' },
  token: { type: 'string' },
  timeout: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
};

const EVERY_OPTION: Options = Object.assign({}, ...COMMANDS.map((c) => c.options), GLOBAL_OPTIONS) as Options;

type Found = { readonly kind: 'help'; readonly text: string } | { readonly kind: 'command'; readonly command: Command; readonly help: boolean };

/** Which command the words name, or which help to print. */
function find(positionals: readonly string[], helpFlag: boolean): Found {
  let words = positionals;
  let help = helpFlag;
  if (words[0] === 'help') {
    help = true;
    words = words.slice(1);
  }
  const first = words[0];
  if (first === undefined) {
    if (help) return { kind: 'help', text: toolHelp(COMMANDS) };
    throw new UsageError('no command given');
  }
  const group = COMMANDS.filter((c) => c.words[0] === first);
  if (group.length === 0) throw new UsageError(`unknown command ${JSON.stringify(first)}`);
  const single = group.find((c) => c.words.length === 1);
  if (single !== undefined) return { kind: 'command', command: single, help };
  const sub = words[1];
  const command = group.find((c) => c.words[1] === sub);
  if (command !== undefined) return { kind: 'command', command, help };
  if (sub === undefined && help) return { kind: 'help', text: groupHelp(first, group) };
  const subs = group.map((c) => c.words[1]).join(', ');
  throw new UsageError(sub === undefined ? `${first} needs a subcommand: ${subs}` : `unknown command "${first} ${sub}" (${first}: ${subs})`);
}

function parse(argv: readonly string[], options: Options, strict: boolean): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({ args: [...argv], options, strict, allowPositionals: true });
    return { values: values as Values, positionals };
  } catch (err) {
    throw new UsageError(err instanceof Error ? err.message : String(err));
  }
}

function client(values: Values, env: NodeJS.ProcessEnv): TcxClient {
  const url = stringOption(values, 'url') ?? (env.TCX_URL === undefined || env.TCX_URL === '' ? DEFAULT_URL : env.TCX_URL);
  const token = stringOption(values, 'token') ?? (env.TCX_TOKEN === '' ? undefined : env.TCX_TOKEN);
  const timeoutMs = positiveIntegerOption(values, 'timeout') ?? DEFAULT_TIMEOUT_MS;
  try {
    return new TcxClient({ url, token, timeoutMs });
  } catch (err) {
    // Never echoes the URL: it might carry credentials.
    const why = err instanceof TypeError && err.message !== 'Invalid URL' ? err.message : 'not a URL';
    throw new UsageError(`the coordinator URL (--url or TCX_URL) is invalid: ${why}`);
  }
}

export async function runCli(argv: readonly string[], env: NodeJS.ProcessEnv, out: Output): Promise<number> {
  let command: Command | undefined;
  let tcx: TcxClient | undefined;
  try {
    const loose = parse(argv, EVERY_OPTION, false);
    const found = find(loose.positionals, loose.values.help === true);
    if (found.kind === 'help') {
      out.stdout(found.text);
      return EXIT.OK;
    }
    command = found.command;
    if (found.help) {
      out.stdout(commandHelp(command));
      return EXIT.OK;
    }
    const { values, positionals } = parse(argv, { ...GLOBAL_OPTIONS, ...command.options }, true);
    const args = positionals.slice(command.words.length);
    if (args.length !== command.positionals.length) {
      const expected = command.positionals.length === 0 ? 'no arguments' : command.positionals.join(' ');
      throw new UsageError(`tcx ${command.words.join(' ')} takes ${expected}${args.length === 0 ? '' : `, not ${args.map((a) => JSON.stringify(a)).join(' ')}`}`);
    }
    tcx = client(values, env);
    return await command.run({ client: tcx, out, json: values.json === true }, { args, values });
  } catch (err) {
    return report(err, command, out);
  } finally {
    await tcx?.close().catch(() => undefined);
  }
}

function report(err: unknown, command: Command | undefined, out: Output): number {
  if (err instanceof UsageError) {
    const where = command === undefined ? 'tcx --help' : `tcx ${command.words.join(' ')} --help`;
    out.stderr(`error: ${err.message}\nsee: ${where}\n`);
    return EXIT.USAGE;
  }
  if (err instanceof TcxApiError) {
    out.stderr(`error ${err.code}: ${err.message}\n`);
    return EXIT.API_ERROR;
  }
  if (err instanceof TcxResponseError) {
    out.stderr(`error: ${err.message}\n`);
    return EXIT.API_ERROR;
  }
  if (err instanceof TcxConnectionError) {
    out.stderr(`error: ${err.message}\n`);
    return EXIT.UNREACHABLE;
  }
  out.stderr(`error: unexpected failure: ${err instanceof Error ? err.message : String(err)}\n`);
  return EXIT.API_ERROR;
}
