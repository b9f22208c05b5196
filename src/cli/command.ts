/**
 * What a `tcx` command is: its words (`transactions list`), its options (node:util parseArgs
 * configuration), its positional arguments, its help, and what it runs. Commands answer an
 * exit code (exit-codes.ts); they write with `ctx.out` and never call process.exit.
 */
import type { ParseArgsConfig } from 'node:util';
import type { TcxClient } from '../client/index.js';
import type { Output } from './output.js';

export type Options = NonNullable<ParseArgsConfig['options']>;
export type Values = Record<string, string | boolean | (string | boolean)[] | undefined>;

export interface Invocation {
  /** The arguments after the command's words, named by `Command.positionals`. */
  readonly args: readonly string[];
  readonly values: Values;
}

export interface Context {
  readonly client: TcxClient;
  readonly out: Output;
  /** --json: one JSON document on stdout instead of tables. */
  readonly json: boolean;
}

export interface Command {
  /** The command's words: ['health'], ['transactions', 'list']. */
  readonly words: readonly string[];
  /** Names of the positional arguments, all required: ['NAME']. */
  readonly positionals: readonly string[];
  readonly options: Options;
  /** One line for the command list. */
  readonly summary: string;
  /** The usage line's options part: '[--state S] [--all]'. */
  readonly synopsis: string;
  /** Lines describing the options (and anything else worth saying). */
  readonly details: readonly string[];
  run(ctx: Context, invocation: Invocation): Promise<number>;
}

/** A wrong invocation: exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function stringOption(values: Values, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function requiredOption(values: Values, name: string): string {
  const v = stringOption(values, name);
  if (v === undefined || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

export function booleanOption(values: Values, name: string): boolean {
  return values[name] === true;
}

export function listOption(values: Values, name: string): string[] {
  const v = values[name];
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).filter((x): x is string => typeof x === 'string');
}

export function positiveIntegerOption(values: Values, name: string): number | undefined {
  const v = stringOption(values, name);
  if (v === undefined) return undefined;
  if (!/^[1-9][0-9]*$/.test(v) || !Number.isSafeInteger(Number(v))) throw new UsageError(`--${name} must be a positive integer, not ${JSON.stringify(v)}`);
  return Number(v);
}

export function oneOf<T extends string>(value: string, allowed: readonly T[], what: string): T {
  if (!(allowed as readonly string[]).includes(value)) throw new UsageError(`${what} must be one of ${allowed.join(', ')}, not ${JSON.stringify(value)}`);
  return value as T;
}
