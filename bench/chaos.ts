/**
 * `npm run chaos -- --seconds N [--seed S] [--clients C] [--instances I]`: the mixed transfer
 * workload (two Postgres, one Redis, one HTTP participant; 2PC and 3PC mixed) under a seeded
 * schedule of coordinator kills, participant restarts and network faults, then full invariant
 * checks. With `--instances I` (I >= 2) the coordinator is I instances over a shared Postgres
 * log, the kills are instance kills (with 3+, one for good) and the summary adds takeover
 * figures. See bench/chaos/run.ts. Prints the seed first and a summary table last; exits 1 on
 * any violation, 2 when the harness itself failed.
 *
 * The coordinator child runs dist/main.js (built first when missing).
 */
import { formatSummary, runChaos } from './chaos/run.js';

function usage(message?: string): never {
  if (message !== undefined) console.error(`chaos: ${message}`);
  console.error('usage: npm run chaos -- --seconds N [--seed S] [--clients C] [--instances I] [--quiet]');
  console.error('  --instances I   I coordinator instances over a shared Postgres log (default 1: one coordinator, file log)');
  process.exit(2);
}

function parseArgs(argv: readonly string[]): { seconds: number; seed: number; clients: number; instances: number; quiet: boolean } {
  let seconds = 60;
  let seed = Math.floor(Math.random() * 2 ** 31);
  let clients = 6;
  let instances = 1;
  let quiet = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = (): number => {
      const raw = inline ?? argv[++i];
      const n = Number(raw);
      if (raw === undefined || raw === '' || !Number.isSafeInteger(n)) usage(`${flag} needs an integer, got ${String(raw)}`);
      return n;
    };
    if (flag === '--seconds') seconds = value();
    else if (flag === '--seed') seed = value();
    else if (flag === '--clients') clients = value();
    else if (flag === '--instances') instances = value();
    else if (flag === '--quiet') quiet = true;
    else if (flag === '--help' || flag === '-h') usage();
    else usage(`unknown argument ${arg}`);
  }
  if (instances < 1 || instances > 8) usage(`--instances must be within 1..8, got ${instances}`);
  return { seconds, seed, clients, instances, quiet };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  console.log(`chaos: seed ${args.seed} (reproduce with --seed ${args.seed})`);
  const summary = await runChaos({ ...args, log: args.quiet ? undefined : (line) => console.log(line) });
  if (args.quiet && (summary.violations.length > 0 || summary.harnessErrors.length > 0)) {
    console.log(`events:\n${summary.events.map((e) => `  ${e}`).join('\n')}`);
  }
  console.log(formatSummary(summary));
  process.exitCode = summary.violations.length > 0 ? 1 : summary.harnessErrors.length > 0 ? 2 : 0;
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (err: unknown) => {
    console.error('chaos: the harness failed:', err);
    process.exit(2);
  },
);
