import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    // Each test file in its own process: a native crash fails that file, not the run.
    pool: 'forks',
    // Two cores: one native suite at a time keeps the timings inside tests meaningful and memory low.
    maxWorkers: 1,
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
