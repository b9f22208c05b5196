/**
 * Reads a V8 .cpuprofile (node --cpu-prof) and prints where the time went:
 * self time by function, self time by package/file, and inclusive time of the
 * coordinator's own functions. `node dist-bench/bench/profile-summary.js FILE [N]`.
 */
import fs from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount: number;
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const file = process.argv[2];
const top = Number(process.argv[3] ?? 30);
if (file === undefined) {
  console.error('usage: profile-summary FILE.cpuprofile [N]');
  process.exit(2);
}
const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

// Time per sample: the delta that follows it.
const selfUs = new Map<number, number>();
for (let i = 0; i < profile.samples.length; i++) {
  const id = profile.samples[i]!;
  const dt = profile.timeDeltas[i + 1] ?? 0;
  selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
}
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);

const where = (n: ProfileNode): string => {
  const url = n.callFrame.url.replace(/^file:\/\//, '');
  const short = url.includes('node_modules/') ? url.slice(url.lastIndexOf('node_modules/') + 13) : url.replace(/.*\/(dist|src)\//, '$1/');
  return `${n.callFrame.functionName || '(anonymous)'} ${short}:${n.callFrame.lineNumber + 1}`;
};
const group = (n: ProfileNode): string => {
  const url = n.callFrame.url;
  if (url === '') return n.callFrame.functionName.startsWith('(') ? n.callFrame.functionName : '(native)';
  if (url.startsWith('node:')) return url;
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m !== null) return m[1]!;
  return url.replace(/.*\/dist\//, 'dist/');
};

/** The innermost frame on the stack that belongs to a package or to the coordinator: who caused this work. */
const owner = (id: number): string => {
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur)!;
    const url = n.callFrame.url;
    if (url.includes('node_modules/') || url.includes('/dist/')) return group(n);
  }
  return group(byId.get(id)!);
};

const self = new Map<string, number>();
const groups = new Map<string, number>();
const owners = new Map<string, number>();
const inclusive = new Map<string, number>();
// JavaScript alone (frames with a source URL): a wall-time profile charges a system call with
// the time the process was preempted in it, so the native share can mislead; this cannot.
const jsSelf = new Map<string, number>();
let jsTotal = 0;
for (const [id, us] of selfUs) {
  const n = byId.get(id)!;
  self.set(where(n), (self.get(where(n)) ?? 0) + us);
  if (n.callFrame.url !== '') {
    jsTotal += us;
    jsSelf.set(where(n), (jsSelf.get(where(n)) ?? 0) + us);
  }
  groups.set(group(n), (groups.get(group(n)) ?? 0) + us);
  const o = owner(id);
  owners.set(o, (owners.get(o) ?? 0) + us);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const node = byId.get(cur)!;
    if (!node.callFrame.url.includes('/dist/')) continue;
    const key = where(node);
    if (seen.has(key)) continue;
    seen.add(key);
    inclusive.set(key, (inclusive.get(key) ?? 0) + us);
  }
}
// The event loop's entry points: inclusive time under each child of the root (and its children).
const entries = new Map<string, number>();
const root = profile.nodes[0]!;
const depthOf = new Map<number, number>([[root.id, 0]]);
for (const n of profile.nodes) for (const c of n.children ?? []) depthOf.set(c, (depthOf.get(n.id) ?? 0) + 1);
for (const [id, us] of selfUs) {
  const chain: ProfileNode[] = [];
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) chain.unshift(byId.get(cur)!);
  const key = chain.slice(1, 3).map((n) => n.callFrame.functionName || '(anonymous)').join(' > ');
  entries.set(key, (entries.get(key) ?? 0) + us);
}
const print = (title: string, map: Map<string, number>, n: number, of = total): void => {
  console.log(`\n${title}`);
  for (const [k, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, n)) {
    console.log(`${((100 * us) / of).toFixed(1).padStart(6)} %  ${(us / 1000).toFixed(0).padStart(7)} ms  ${k}`);
  }
};
console.log(`profile ${file}: ${(total / 1e6).toFixed(2)} s sampled`);
print('self time by package / file', groups, top);
print('time by the package or file that caused it (innermost own frame on the stack)', owners, top);
print('self time by function', self, top);
print('inclusive time by event-loop entry point (two levels below the root)', entries, top);
print('inclusive time of the coordinator\'s own functions', inclusive, top);
print(`self time of JavaScript alone (${(jsTotal / 1e6).toFixed(2)} s), by function, as a share of it`, jsSelf, top, jsTotal);
