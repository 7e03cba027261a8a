// 2,000 seeded mutations of the demo model, each loaded in a worker process (npm run fuzz runs 20,000).
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContextCreateError, DecodeError, GgufError, ModelLoadError } from '../../dist/index.js';
import { classify } from '../../scripts/fuzz/outcome.mjs';
import { root } from '../helpers.js';

describe('fuzzing GGUF loading', () => {
  it('counts only GgufError and llama.cpp\'s load refusal as clean rejections', () => {
    expect(classify(new GgufError('bad header', 4), 'load').result).toBe('rejected-by-us');
    expect(classify(new ModelLoadError('llama_model_load_from_file failed'), 'load').result).toBe('rejected-by-llama');
    expect(classify(Object.assign(new Error('x'), { code: 'ERR_HUOZI_MODEL_LOAD' }), 'load', { raw: true }).result).toBe('rejected-by-llama');
    // A bug of our own reader, other typed errors, argument errors, and anything once the model loaded.
    expect(classify(new TypeError("Cannot read properties of undefined (reading 'type')"), 'load').result).toBe('unexpected');
    expect(classify(Object.assign(new RangeError('x'), { code: 'ERR_OUT_OF_RANGE' }), 'load').result).toBe('unexpected');
    expect(classify(new ContextCreateError('x'), 'load').result).toBe('unexpected');
    expect(classify(new ModelLoadError('x'), 'run').result).toBe('unexpected');
    expect(classify(new DecodeError('llama_decode failed'), 'run').result).toBe('unexpected');
    expect(classify(new ContextCreateError('x'), 'run').result).toBe('unexpected');
    expect(classify(Object.assign(new Error('x'), { code: 'ERR_HUOZI_MODEL_LOAD' }), 'load').result).toBe('unexpected');
  });

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
    expect(summary.tally.unexpected).toBe(0);
    expect(summary.tally['rejected-by-us'] + summary.tally['rejected-by-llama'] + summary.tally.loaded).toBe(2000);
    // Each clean outcome happens: the mutations reach our validator, llama.cpp's loader and generation.
    expect(summary.tally['rejected-by-us']).toBeGreaterThan(0);
    expect(summary.tally['rejected-by-llama']).toBeGreaterThan(0);
    expect(summary.tally.loaded).toBeGreaterThan(0);
  }, 700_000);
});
