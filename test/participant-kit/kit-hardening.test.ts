import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { FileBranchStore } from '../../src/participant-kit/branch-store.js';
import { classifyInquiry } from '../../src/participant-kit/participant-routes.js';

const notFound = (coordinatorId?: string) => ({
  error: { code: 'UNKNOWN_TRANSACTION', message: 'no transaction', ...(coordinatorId === undefined ? {} : { details: { coordinatorId } }) },
});

describe('participant kit: presumed abort only from the coordinator that prepared the branch', () => {
  it('reads a 404 from the same coordinator as "no record", from another one as unreachable', () => {
    expect(classifyInquiry(404, notFound('c1'), 'c1').kind).toBe('no-record');
    expect(classifyInquiry(404, notFound('c2'), 'c1').kind).toBe('unreachable');
    expect(classifyInquiry(404, notFound(), 'c1').kind).toBe('no-record'); // an answer without the id: trusted as before
    expect(classifyInquiry(404, { error: { code: 'NOT_FOUND' } }, 'c1').kind).toBe('unreachable');
  });
});

describe('FileBranchStore durability', () => {
  const entry = (n: number) => ({ transactionId: `t${n}`, branchId: 'b1', status: 'prepared' as const, payload: null, updatedAt: new Date().toISOString() });

  it('drops a torn last line, but refuses a corrupt line with entries after it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcx-kit-store-'));
    const file = path.join(dir, 'branches.jsonl');
    const store = await FileBranchStore.open(file);
    for (let i = 0; i < 3; i++) await store.put(entry(i));
    await store.close();

    fs.appendFileSync(file, '{"transactionId":"t9","bra'); // torn tail
    const reopened = await FileBranchStore.open(file);
    expect((await reopened.list()).map((e) => e.transactionId)).toEqual(['t0', 't1', 't2']);
    await reopened.close();

    const lines = fs.readFileSync(file, 'utf8').split('\n');
    lines[1] = '{"garbage';
    fs.writeFileSync(file, lines.join('\n'));
    await expect(FileBranchStore.open(file)).rejects.toThrow(/corrupt/);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
