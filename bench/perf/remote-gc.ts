/**
 * A full garbage collection in the coordinator's process, asked through the inspector it was
 * started with (`--inspect=127.0.0.1:0`): memory readings taken right after compare live
 * objects, not whatever the collector had not reclaimed yet.
 */
import fs from 'node:fs';
import { WebSocket } from 'undici';

export const INSPECT_FLAG = '--inspect=127.0.0.1:0';

async function debuggerUrl(outputFile: string): Promise<string> {
  const deadline = Date.now() + 5_000;
  for (;;) {
    const found = /Debugger listening on (ws:\/\/\S+)/.exec(fs.readFileSync(outputFile, 'utf8'));
    if (found?.[1] !== undefined) return found[1];
    if (Date.now() > deadline) throw new Error(`no inspector address in ${outputFile}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function collectGarbage(outputFile: string): Promise<void> {
  const ws = new WebSocket(await debuggerUrl(outputFile));
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('the inspector did not answer within 10 s')), 10_000);
      ws.addEventListener('error', () => reject(new Error('inspector connection failed')));
      ws.addEventListener('open', () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' })));
      ws.addEventListener('message', (event) => {
        if ((JSON.parse(String(event.data)) as { id?: number }).id !== 1) return;
        clearTimeout(timer);
        resolve();
      });
    });
  } finally {
    ws.close();
  }
}
