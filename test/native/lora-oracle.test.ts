// The LoRA oracle (issue #18), without Python: the fixture's PEFT adapter merged into the HF checkpoint in
// JavaScript (scripts/lora-merge.mjs: W + scale·alpha/r·B·A, expert by expert) and converted by our converter must
// give the logits of the base model with the adapter converted by convertLora and applied at run time, within
// 1e-3 (f32 GGUFs both); scale 0 must give the base model's logits exactly. Then the CLI's three steps of the
// guide (convert-lora, chat/complete --lora).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convert, convertLora, loadModel, type LoraAdapter, type Model } from '../../dist/index.js';
// @ts-expect-error: a plain ES module script
import { mergeLora } from '../../scripts/lora-merge.mjs';
import { fixtureDir, root } from '../helpers.js';

const hfDir = join(fixtureDir, 'hf');
const peftDir = join(root, 'test', 'fixtures', 'huozi-tiny-lora');
const dir = mkdtempSync(join(tmpdir(), 'huozi-lora-oracle-'));
const basePath = join(dir, 'base-f32.gguf');
const adapterPath = join(dir, 'adapter-f32.gguf');
const prompts = ['床前明月光，疑是地上霜。', 'The moon over the river', '白日依山尽'];

let base: Model;
let adapter: LoraAdapter;

/**
 * Every position's logits of `text`, evaluated from an empty context. f32 throughout: the KV cache in f32 and no
 * flash attention (the CPU's flash attention and an f16 cache round keys and values to f16, ~3e-3 here).
 */
async function logits(model: Model, text: string, loras: { adapter: LoraAdapter; scale: number }[] = []): Promise<Float32Array> {
  const context = await model.createContext({ contextSize: 128, threads: 1, flashAttention: false, cacheTypeK: 'f32', cacheTypeV: 'f32' });
  await context.setLoras(loras);
  const out = (await context.evaluate(model.tokenize(text), { logits: 'all' }))!;
  await context.dispose();
  return out;
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

beforeAll(async () => {
  await convert(hfDir, basePath, { outType: 'f32' });
  await convertLora(peftDir, { base: hfDir, output: adapterPath, outType: 'f32' });
  base = await loadModel(basePath);
  adapter = await base.loadLora(adapterPath);
}, 120_000);

afterAll(async () => {
  await base?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

describe('base + adapter at run time = the merged checkpoint', () => {
  for (const scale of [1, 0.5, -1]) {
    it(`scale ${scale}: logits within 1e-3 of the merged model's`, async () => {
      const mergedDir = join(dir, `merged-${scale}`);
      const mergedPath = join(dir, `merged-${scale}.gguf`);
      await mergeLora(hfDir, peftDir, mergedDir, { scale });
      await convert(mergedDir, mergedPath, { outType: 'f32' });
      const merged = await loadModel(mergedPath);
      try {
        let worst = 0;
        let moved = 0;
        for (const text of prompts) {
          const runtime = await logits(base, text, [{ adapter, scale }]);
          worst = Math.max(worst, maxDiff(runtime, await logits(merged, text)));
          moved = Math.max(moved, maxDiff(runtime, await logits(base, text)));
        }
        expect(worst).toBeLessThanOrEqual(1e-3);
        // The adapter matters: far more than the tolerance (a test that cannot fail would prove nothing).
        expect(moved).toBeGreaterThan(0.5);
      } finally {
        await merged.dispose();
      }
    }, 120_000);
  }

  it('scale 0 gives the base model\'s logits exactly', async () => {
    for (const text of prompts) {
      const zero = await logits(base, text, [{ adapter, scale: 0 }]);
      const plain = await logits(base, text);
      expect(Buffer.from(zero.buffer).equals(Buffer.from(plain.buffer))).toBe(true);
    }
  });
});

describe('the guide\'s three commands: convert-lora, then chat or complete with --lora', () => {
  it('converts and answers with the adapter (scale 0: as without it)', () => {
    const cli = (args: string[]) => execFileSync(process.execPath, [join(root, 'dist/cli/main.js'), ...args], { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
    const out = join(dir, 'cli-adapter.gguf');
    cli(['convert-lora', peftDir, '--base', hfDir, '-o', out]);
    const complete = (extra: string[]) => cli(['complete', '-m', basePath, '-p', '床前明月光，', '-n', '12', '--temp', '0', '-t', '1', ...extra]);
    const plain = complete([]);
    expect(complete(['--lora', `${out}:0`])).toBe(plain);
    expect(complete(['--lora', out])).not.toBe(plain);
    expect(() => complete(['--lora', join(dir, 'missing.gguf')])).toThrow(/ENOENT|missing/);
  }, 120_000);
});
