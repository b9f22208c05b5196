/**
 * Vitest setup file: a test fails when an answer it caused departs from openapi.yaml
 * (see response-contract.ts). Answers given in beforeAll hooks count against the first
 * test after them; answers given in afterAll hooks fail the file.
 */

import { afterAll, afterEach } from 'vitest';
import { checkAnswers, takeViolations } from './response-contract.js';

checkAnswers();

function failOnViolations(when: string): void {
  const found = takeViolations();
  if (found.length === 0) return;
  throw new Error(`${found.length} answer(s) ${when} do not match openapi.yaml:\n- ${found.join('\n- ')}`);
}

afterEach(() => failOnViolations('of this test (or of the hooks before it)'));
afterAll(() => failOnViolations('of the last hooks'));
