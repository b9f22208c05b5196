#!/usr/bin/env node
/**
 * The `tcx` command (package.json "bin"; built to dist/cli/tcx.js). `tcx --help` lists the
 * commands, the options and the exit codes; cli.ts does the work.
 */
import { runCli } from './cli.js';
import { processOutput } from './output.js';

// `tcx … | head`: a closed stdout ends the command quietly instead of with a stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
  throw err;
});

process.exitCode = await runCli(process.argv.slice(2), process.env, processOutput);
