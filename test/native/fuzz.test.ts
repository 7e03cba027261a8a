// 2,000 seeded cases of each fuzz target (scripts/fuzz/targets/*.mjs), each run in a worker process
// (npm run fuzz runs 20,000 of each).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContextCreateError, DecodeError, GgufError, ModelLoadError } from '../../dist/index.js';
import { classify } from '../../scripts/fuzz/outcome.mjs';
import { root } from '../helpers.js';

const targets = readdirSync(join(root, 'scripts/fuzz/targets')).filter((f) => f.endsWith('.mjs')).map((f) => f.slice(0, -4)).sort();

interface TargetSummary {
  target: string;
  cases: number;
  seconds: number;
  peakRssMb: number;
  tally: Record<string, number>;
  failures: unknown[];
}

function fuzz(target: string, cases: number): TargetSummary {
  let stdout: string;
  try {
    stdout = execFileSync(process.execPath, [join(root, 'scripts/fuzz.mjs'), '--target', target, '--cases', String(cases), '--seed', '2', '--json'], {
      encoding: 'utf8', timeout: 900_000, maxBuffer: 64 << 20,
    });
  } catch (error) {
    stdout = (error as { stdout: string }).stdout;
  }
  return JSON.parse(stdout.trim().split('\n').at(-1)!).targets[0];
}

describe('fuzzing', () => {
  it('counts only GgufError and llama.cpp\'s load refusal as clean rejections of a GGUF', () => {
    expect(classify(new GgufError('bad header', 4), 'load')).toMatchObject({ result: 'clean', class: 'rejected: GgufError' });
    expect(classify(new ModelLoadError('llama_model_load_from_file failed'), 'load')).toMatchObject({ result: 'clean', class: 'rejected: ModelLoadError' });
    expect(classify(Object.assign(new Error('x'), { code: 'ERR_HUOZI_MODEL_LOAD' }), 'load', { raw: true }).class).toBe('rejected: ModelLoadError');
    // A bug of our own reader, other typed errors, argument errors, and anything once the model loaded.
    expect(classify(new TypeError("Cannot read properties of undefined (reading 'type')"), 'load').result).toBe('unexpected');
    expect(classify(Object.assign(new RangeError('x'), { code: 'ERR_OUT_OF_RANGE' }), 'load').result).toBe('unexpected');
    expect(classify(new ContextCreateError('x'), 'load').result).toBe('unexpected');
    expect(classify(new ModelLoadError('x'), 'run').result).toBe('unexpected');
    expect(classify(new DecodeError('llama_decode failed'), 'run').result).toBe('unexpected');
    expect(classify(new ContextCreateError('x'), 'run').result).toBe('unexpected');
    expect(classify(Object.assign(new Error('x'), { code: 'ERR_HUOZI_MODEL_LOAD' }), 'load').result).toBe('unexpected');
  });

  it('fuzz.mjs counts each failure a worker cannot report itself: signal, hang, exit, RSS over the bound', () => {
    // A target of our own whose cases do what a hostile file could make the library do.
    const dir = mkdtempSync(join(tmpdir(), 'huozi-fuzz-selftest-'));
    try {
      writeFileSync(join(dir, 'selftest.mjs'), `
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
export const title = 'self-test';
export async function setup(workDir) { return { workDir }; }
const KINDS = ['clean', 'throw', 'abort', 'hang', 'exit', 'grow', 'bad-outcome'];
export function makeCase(state, seed, index) {
  const path = join(state.workDir, 'case.txt');
  writeFileSync(path, KINDS[index % KINDS.length]);
  return { path, kinds: [KINDS[index % KINDS.length]] };
}
const keep = [];
export async function runCase(path) {
  const { readFileSync } = await import('node:fs');
  const kind = readFileSync(path, 'utf8');
  if (kind === 'clean') return { result: 'clean', class: 'fine' };
  if (kind === 'throw') throw new TypeError('a bug');
  if (kind === 'abort') process.kill(process.pid, 'SIGABRT');
  if (kind === 'hang') await new Promise(() => setInterval(() => {}, 1000));
  if (kind === 'exit') process.exit(3);
  if (kind === 'grow') { keep.push(Buffer.alloc(400 << 20, 1)); return { result: 'clean', class: 'fine' }; }
  return { result: 'maybe' };
}
`);
      let stdout: string;
      try {
        stdout = execFileSync(process.execPath, [join(root, 'scripts/fuzz.mjs'), '--target-dir', dir, '--target', 'selftest', '--cases', '14',
          '--timeout', '15000', '--max-rss-mb', '300', '--json'], { encoding: 'utf8', timeout: 120_000 });
        expect.unreachable('fuzz.mjs must exit non-zero when a case fails');
      } catch (error) {
        expect((error as { status: number }).status).toBe(1);
        stdout = (error as { stdout: string }).stdout;
      }
      const summary = JSON.parse(stdout.trim().split('\n').at(-1)!).targets[0];
      expect(summary.tally).toEqual({ fine: 2, unexpected: 4, signal: 2, timeout: 2, exit: 2, rss: 2 });
      expect(summary.failures.map((f: { kinds: string[]; result: string }) => `${f.kinds[0]}:${f.result}`).sort()).toEqual([
        'abort:signal', 'abort:signal', 'bad-outcome:unexpected', 'bad-outcome:unexpected', 'exit:exit', 'exit:exit',
        'grow:rss', 'grow:rss', 'hang:timeout', 'hang:timeout', 'throw:unexpected', 'throw:unexpected',
      ]);
      expect(summary.peakRssMb).toBeGreaterThan(300);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 180_000);

  it.each(targets)('target %s: 2,000 cases, no signal, no hang, no RSS over the bound, every case a clean outcome', (target) => {
    const summary = fuzz(target, 2000);
    console.log(`fuzz ${target}: ${JSON.stringify(summary.tally)} in ${summary.seconds.toFixed(0)} s, peak RSS ${summary.peakRssMb.toFixed(0)} MiB`);
    expect(summary.failures).toEqual([]);
    for (const failure of ['unexpected', 'signal', 'timeout', 'exit', 'rss']) expect(summary.tally[failure] ?? 0).toBe(0);
    expect(Object.values(summary.tally).reduce((a, b) => a + b, 0)).toBe(2000);
    // The peak RSS was measured (Linux), and stayed under fuzz.mjs's default bound.
    expect(summary.peakRssMb).toBeGreaterThan(0);
    expect(summary.peakRssMb).toBeLessThan(1024);
    if (target === 'gguf') {
      // Each clean outcome happens: the mutations reach our validator, llama.cpp's loader and generation.
      expect(summary.tally['rejected: GgufError']).toBeGreaterThan(0);
      expect(summary.tally['rejected: ModelLoadError']).toBeGreaterThan(0);
      expect(summary.tally.loaded).toBeGreaterThan(0);
    }
    if (target === 'lora') {
      // The mutations reach the reader, the adapter check and, where the model has loadLora, llama.cpp.
      expect(summary.tally['rejected: GgufError']).toBeGreaterThan(0);
      expect(summary.tally['rejected: LoraError']).toBeGreaterThan(0);
      expect((summary.tally['loaded, applied, generated'] ?? 0) + (summary.tally.accepted ?? 0)).toBeGreaterThan(0);
    }
  }, 900_000);
});
