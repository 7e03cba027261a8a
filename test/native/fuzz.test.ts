// 2,000 seeded mutations of the demo model, each loaded in a worker process (npm run fuzz runs 20,000).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { root } from '../helpers.js';

describe('fuzzing GGUF loading', () => {
  it('2,000 mutated files: no signal, no hang, every case a clean outcome', () => {
    let stdout: string;
    try {
      stdout = execFileSync(process.execPath, [join(root, 'scripts/fuzz.mjs'), '--cases', '2000', '--seed', '2', '--json'], {
        encoding: 'utf8', timeout: 600_000,
      });
    } catch (error) {
      stdout = (error as { stdout: string }).stdout;
    }
    const summary = JSON.parse(stdout.trim().split('\n').at(-1)!);
    console.log(`fuzz: ${JSON.stringify(summary.tally)} in ${summary.seconds.toFixed(0)} s`);
    expect(summary.failures).toEqual([]);
    expect(summary.tally.signal).toBe(0);
    expect(summary.tally.timeout).toBe(0);
    expect(summary.tally['rejected-by-us'] + summary.tally['rejected-by-llama'] + summary.tally.loaded).toBe(2000);
    expect(summary.tally.loaded).toBeGreaterThan(0);
  }, 700_000);
});
