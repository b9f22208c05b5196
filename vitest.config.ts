import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Fails a test when an answer it caused does not match openapi.yaml.
    setupFiles: ['test/support/response-contract-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    pool: 'forks',
    // 2-core machines: at most two test files at once.
    fileParallelism: true,
    maxWorkers: 2,
    minWorkers: 1,
  },
});
