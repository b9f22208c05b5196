import { mkdtemp, readdir, rm, unlink, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileLog, LogCorruptedError, nodeLogIo, type LogIo, type SnapshotFile } from '../../src/log/file-log.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tcx-wal-files-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const file = (name: string, text: string): SnapshotFile => ({ name, data: Buffer.from(text) });
const tcxf = async (): Promise<string[]> => (await readdir(dir)).filter((f) => f.endsWith('.tcxf')).sort();

/** Records every create and datasync the log makes, in order. */
function recordingIo(events: string[]): LogIo {
  return {
    ...nodeLogIo,
    open: async (path, flags) => {
      const h = await nodeLogIo.open(path, flags);
      const name = path.slice(dir.length + 1) || 'dir';
      if (flags === 'wx') events.push(`create ${name}`);
      return { ...h, write: h.write.bind(h), sync: h.sync.bind(h), truncate: h.truncate.bind(h), close: h.close.bind(h), datasync: () => (events.push(`datasync ${name}`), h.datasync()) };
    },
  };
}

describe('FileLog: files a snapshot includes by reference', () => {
  it('writes each file durably before the snapshot that names it, once, and gives it back at open', async () => {
    const events: string[] = [];
    let files = [file('bucket-1.tcxf', 'one')];
    const { log } = await FileLog.open({ dir, io: recordingIo(events), snapshot: () => ({ records: ['state'], files }) });
    await log.append('a', { force: true });
    await log.compact();
    files = [...files, file('bucket-2.tcxf', 'two')];
    await log.compact();
    await log.close();
    const created = events.filter((e) => e.startsWith('create'));
    // Each file once, always before the segment whose snapshot names it first.
    expect(created).toEqual(['create segment-0000000000000001.log', 'create bucket-1.tcxf', 'create segment-0000000000000002.log', 'create bucket-2.tcxf', 'create segment-0000000000000003.log']);
    expect(events.indexOf('datasync bucket-1.tcxf')).toBeLessThan(events.indexOf('create segment-0000000000000002.log'));
    const reopened = await FileLog.open({ dir, snapshot: () => [] });
    expect(reopened.records).toEqual(['state']);
    expect([...reopened.files.keys()].sort()).toEqual(['bucket-1.tcxf', 'bucket-2.tcxf']);
    expect(Buffer.from(reopened.files.get('bucket-2.tcxf')!).toString()).toBe('two');
    await reopened.log.close();
  });

  it('deletes files no complete snapshot names: dropped by a newer one, or left by a crash before theirs', async () => {
    let files = [file('old.tcxf', 'old'), file('kept.tcxf', 'kept')];
    const { log } = await FileLog.open({ dir, snapshot: () => ({ records: [], files }) });
    await log.compact();
    files = [file('kept.tcxf', 'kept')];
    await log.compact();
    expect(await tcxf()).toEqual(['kept.tcxf']);
    await log.append('after', { force: true });
    await log.close();
    // A crash after writing a file, before the snapshot that would have named it.
    await writeFile(join(dir, 'orphan.tcxf'), 'half');
    const reopened = await FileLog.open({ dir, snapshot: () => [] });
    expect(reopened.records).toEqual(['after']);
    expect(await tcxf()).toEqual(['kept.tcxf']);
    await reopened.log.close();
  });

  it('refuses to open when a file the snapshot names is missing or damaged', async () => {
    const { log } = await FileLog.open({ dir, snapshot: () => ({ records: [], files: [file('needed.tcxf', 'payload')] }) });
    await log.compact();
    await log.close();
    const good = await readFile(join(dir, 'needed.tcxf'));
    await writeFile(join(dir, 'needed.tcxf'), Buffer.from('pAyload'));
    await expect(FileLog.open({ dir, snapshot: () => [] })).rejects.toThrow(LogCorruptedError);
    await unlink(join(dir, 'needed.tcxf'));
    await expect(FileLog.open({ dir, snapshot: () => [] })).rejects.toThrow(LogCorruptedError);
    await writeFile(join(dir, 'needed.tcxf'), good);
    const reopened = await FileLog.open({ dir, snapshot: () => [] });
    expect(reopened.files.size).toBe(1);
    await reopened.log.close();
  });
});
