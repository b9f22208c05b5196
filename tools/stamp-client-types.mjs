// Second step of `npm run generate:client`: adds to the header of the file openapi-typescript
// generated (src/client/api-types.ts) how to regenerate it. Idempotent; takes the file's path.
// test/client/api-types.test.ts runs the same two steps into a temp file and compares.
import { readFileSync, writeFileSync } from 'node:fs';
import { argv } from 'node:process';

const GENERATED = ' * Do not make direct changes to the file.\n';
const HOW_TO_REGENERATE =
  ' * Generated from openapi.yaml by `npm run generate:client` (openapi-typescript openapi.yaml\n' +
  ' * -o src/client/api-types.ts, then tools/stamp-client-types.mjs): change the spec, then regenerate.\n' +
  ' * test/client/api-types.test.ts fails while this file is stale.\n';

const file = argv[2];
if (file === undefined) throw new Error('usage: node tools/stamp-client-types.mjs <generated file>');
const text = readFileSync(file, 'utf8');
if (!text.includes(HOW_TO_REGENERATE)) {
  if (!text.includes(GENERATED)) throw new Error(`${file} does not start with openapi-typescript's header`);
  writeFileSync(file, text.replace(GENERATED, GENERATED + HOW_TO_REGENERATE), 'utf8');
}
