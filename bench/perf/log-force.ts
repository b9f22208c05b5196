/** Forced appends to the file log alone: the hardware's group-commit ceiling. */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileLog } from '../../src/log/file-log.js';
import { measure } from './measure.js';
import type { Row } from '../run.js';

export async function logForce(): Promise<Row[]> {
  const rows: Row[] = [];
  for (const clients of [1, 16, 64]) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-bench-log-'));
    const { log } = await FileLog.open({ dir, snapshot: () => [] });
    const record = { t: 'decision', id: '00000000-0000-4000-8000-000000000000', decision: 'commit', branches: [] };
    const cell = await measure(clients, () => log.append(record, { force: true }));
    const fsyncs = log.stats().fsyncs;
    const appended = log.stats().appendedRecords;
    await log.close();
    fs.rmSync(dir, { recursive: true, force: true });
    rows.push({ scenario: 'log-force', variant: 'appends', clients, ...cell, note: `${(appended / Math.max(1, fsyncs)).toFixed(1)} appends per fdatasync` });
  }
  return rows;
}
