// The KV cache's types (llama.cpp -ctk/-ctv): applied (the cache's size follows them), checked before llama.cpp
// sees them, and the numbers they give (f32 and f16 close, q8_0 further but sane).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel, type Model } from '../../dist/index.js';
import { f16Path } from '../helpers.js';

let model: Model;
beforeAll(async () => {
  model = await loadModel(f16Path);
});
afterAll(async () => {
  await model?.dispose();
});

async function run(options: Record<string, unknown>) {
  const context = await model.createContext({ contextSize: 256, threads: 1, ...options });
  const kv = context.memory().reduce((sum, d) => sum + d.context, 0);
  const logits = (await context.evaluate(model.tokenize('床前明月光，疑是地上霜。'), { logits: 'all' }))!;
  await context.dispose();
  return { kv, logits };
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  return d;
}

describe('cacheTypeK / cacheTypeV', () => {
  it('sizes the cache by type and computes with it', async () => {
    // Without flash attention (the CPU's rounds keys and values to f16 whatever the cache holds).
    const f16 = await run({ flashAttention: false });
    const f32 = await run({ cacheTypeK: 'f32', cacheTypeV: 'f32', flashAttention: false });
    const q8 = await run({ cacheTypeK: 'q8_0', cacheTypeV: 'q8_0', flashAttention: true });
    expect(f32.kv).toBe(2 * f16.kv);
    expect(q8.kv).toBeLessThan(0.6 * f16.kv);
    // Rounding keys and values differently moves the logits a little, not much.
    expect(maxDiff(f32.logits, f16.logits)).toBeGreaterThan(0);
    expect(maxDiff(f32.logits, f16.logits)).toBeLessThan(0.1);
    expect(maxDiff(q8.logits, f16.logits)).toBeLessThan(1);
  });

  it('refuses what llama.cpp cannot use, naming the option', async () => {
    await expect(model.createContext({ cacheTypeK: 'q2_K' as never })).rejects.toThrow(/cacheTypeK/);
    await expect(model.createContext({ cacheTypeV: 'f64' as never })).rejects.toThrow(/cacheTypeV/);
    await expect(model.createContext({ cacheTypeV: 'q8_0', flashAttention: false })).rejects.toThrow(/needs flashAttention/);
    await expect(model.createParallelContext({ cacheTypeK: 1 as never })).rejects.toThrow(TypeError);
  });
});
