import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortError, DisposedError, loadModel, type Model } from '../../dist/index.js';
import { buildNativeTools, nativeEmbeddings } from '../../scripts/native-tools.mjs';
import { f16Path, fixtureDir } from '../helpers.js';

// Our embeddings against llama.cpp's own llama-embedding from the addon's tree, on the f16 fixture: same packing
// (-c = -b = -ub = batchSize, a unified cache, inputs in order), same pooling and normalization. Both run the same
// kernels on the same batches, so they agree to float rounding (measured: cosine 1 - 1e-7 or closer, the 7
// decimals llama-embedding prints); cosine >= 0.9999 leaves room for other CPUs and builds.
const COSINE = 0.9999;

function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let ab = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return ab / Math.sqrt(aa * bb);
}

/** 20 texts, Chinese and English, from 2 to about 500 tokens (one line each: llama-embedding reads lines). */
function texts(model: Model): string[] {
  const en = readFileSync(join(fixtureDir, 'eval/heldout-en.txt'), 'utf8').replace(/\s+/g, ' ');
  const zh = readFileSync(join(fixtureDir, 'eval/heldout-zh.txt'), 'utf8').replace(/\s+/g, '');
  const out = ['a', '你', 'Hello world', '床前明月光，疑是地上霜。', 'emoji 😀 and 𝄞', '混合 mixed 文本 text。'];
  const lengths = [20, 60, 150, 300, 600, 900, 1400, 2000];
  for (const [i, n] of lengths.entries()) out.push(en.slice(i * 97, i * 97 + n).trim());
  for (const [i, n] of [10, 40, 120, 250, 400, 700].entries()) out.push(zh.slice(i * 53, i * 53 + n));
  // At most 500 tokens each.
  return out.map((t) => {
    let s = t;
    while (model.tokenize(s).length > 500) s = s.slice(0, Math.floor(s.length * 0.9));
    return s;
  });
}

let model: Model;
let inputs: string[];

beforeAll(async () => {
  const tools = buildNativeTools(['llama-embedding']);
  console.log(`native tools: ${tools.why}`);
  model = await loadModel(f16Path);
  inputs = texts(model);
}, 1_200_000);

afterAll(async () => {
  await model?.dispose();
});

describe('EmbeddingContext against llama-embedding', () => {
  it('the texts span 2 to 500 tokens, Chinese and English', () => {
    const counts = inputs.map((t) => model.tokenize(t).length);
    expect(inputs).toHaveLength(20);
    expect(Math.min(...counts)).toBe(2);
    expect(Math.max(...counts)).toBeGreaterThan(400);
    expect(Math.max(...counts)).toBeLessThanOrEqual(500);
  });

  it.each([
    { pooling: 'mean', normalize: true },
    { pooling: 'cls', normalize: true },
    { pooling: 'last', normalize: true },
    { pooling: 'none', normalize: true },
    { pooling: 'mean', normalize: false },
  ] as const)('pooling $pooling, normalize $normalize: same dimension, cosine >= 0.9999', async ({ pooling, normalize }) => {
    const native = nativeEmbeddings(f16Path, inputs, { pooling, normalize, batchSize: 2048, threads: 2 }).embeddings as number[][];
    await using context = await model.createEmbeddingContext({ pooling, normalize, contextSize: 2048, threads: 2 });
    expect(context.pooling).toBe(pooling);
    const ours = await context.embed(inputs);
    // Pooling none: llama-embedding prints every token's embedding, input after input.
    const rows = pooling === 'none' ? (ours as unknown as Float32Array[][]).flat() : (ours as Float32Array[]);
    expect(rows.length).toBe(native.length);
    let worst = 1;
    let worstNorm = 0;
    for (let i = 0; i < rows.length; i++) {
      expect(rows[i].length).toBe(native[i].length);
      expect(rows[i].length).toBe(model.info.embeddingSize);
      worst = Math.min(worst, cosine(rows[i], native[i]));
      // Unnormalized, the lengths agree too (llama-embedding prints 7 decimals).
      const na = Math.hypot(...native[i]);
      worstNorm = Math.max(worstNorm, Math.abs(Math.hypot(...rows[i]) - na) / na);
    }
    console.log(`pooling ${pooling}${normalize ? '' : ' (not normalized)'}: ${rows.length} embeddings, lowest cosine ${worst.toFixed(9)}, largest relative length difference ${worstNorm.toExponential(2)}`);
    expect(worst).toBeGreaterThanOrEqual(COSINE);
    expect(worstNorm).toBeLessThan(1e-4);
  }, 300_000);
});

describe('EmbeddingContext', () => {
  it('one text, a list, token ids; usage counts tokens as the model tokenizes', async () => {
    await using context = await model.createEmbeddingContext({ threads: 2 });
    expect(context.pooling).toBe('mean'); // the GGUF names no pooling
    expect(context.dimension).toBe(model.info.embeddingSize);
    const one = await context.embed('床前明月光');
    expect(one).toBeInstanceOf(Float32Array);
    expect(Math.hypot(...one)).toBeCloseTo(1, 5);
    const fromIds = await context.embed(model.tokenize('床前明月光'));
    expect(cosine(one, fromIds)).toBeGreaterThan(0.999999);
    expect(await context.embed([])).toEqual([]);
    const r = await context.embedWithUsage(['床前明月光', new Int32Array(model.tokenize('Hello')), [1, 2, 3]]);
    expect(r.tokenCounts).toEqual([model.tokenize('床前明月光').length, model.tokenize('Hello').length, 3]);
    expect(r.promptTokens).toBe(r.tokenCounts.reduce((a, b) => a + b));
    // An input's embedding does not depend on the inputs packed with it (each is its own sequence).
    expect(cosine(r.embeddings[0], one)).toBeGreaterThan(0.9999);
  });

  it('any batch size: mean pooling with a batch that 256 sequences do not divide (llama-embedding -b 300 aborts)', async () => {
    await using big = await model.createEmbeddingContext({ threads: 2 });
    const want = await big.embed(['hello world', '床前明月光']);
    for (const size of [1, 7, 255, 257, 293, 300, 513]) {
      await using context = await model.createEmbeddingContext({ pooling: 'mean', contextSize: Math.min(size, 64), batchSize: size, threads: 2 });
      expect(context.batchSize).toBe(size);
      if (size < 8) {
        await expect(context.embed('hello world and more words')).rejects.toThrow(RangeError);
        continue;
      }
      const got = await context.embed(['hello world', '床前明月光']);
      for (let i = 0; i < 2; i++) expect(cosine(got[i], want[i])).toBeGreaterThan(0.9999);
    }
  });

  it('pooling none: one row per token', async () => {
    await using context = await model.createEmbeddingContext({ pooling: 'none', threads: 2 });
    const rows = await context.embed('Hello world');
    expect(rows).toHaveLength(model.tokenize('Hello world').length);
    for (const row of rows) expect(row.length).toBe(context.dimension);
  });

  it('refuses bad options and inputs with typed errors, before anything runs', async () => {
    await expect(model.createEmbeddingContext({ pooling: 'rank' as never })).rejects.toThrow(RangeError);
    await expect(model.createEmbeddingContext({ poling: 'mean' } as never)).rejects.toThrow(/Did you mean "pooling"/);
    await expect(model.createEmbeddingContext({ normalize: 1 as never })).rejects.toThrow(TypeError);
    await expect(model.createEmbeddingContext({ contextSize: 512, batchSize: 256 })).rejects.toThrow(/batchSize/);
    await expect(model.createEmbeddingContext({ threads: 0 })).rejects.toThrow(RangeError);
    await using context = await model.createEmbeddingContext({ contextSize: 64, threads: 2 });
    await expect(context.embed('')).rejects.toThrow(RangeError);
    await expect(context.embed([''])).rejects.toThrow(/inputs\[0\]/);
    await expect(context.embed(new Int32Array(0))).rejects.toThrow(RangeError);
    await expect(context.embed([-1])).rejects.toThrow(RangeError);
    await expect(context.embed([model.vocabularySize])).rejects.toThrow(/token id between 0 and/);
    await expect(context.embed([[1, 2], [1, 2 ** 31]])).rejects.toThrow(/inputs\[1\]\[1\]/);
    await expect(context.embed([1.5])).rejects.toThrow(RangeError);
    await expect(context.embed({} as never)).rejects.toThrow(TypeError);
    await expect(context.embed([{}] as never)).rejects.toThrow(TypeError);
    await expect(context.embed(new Int32Array(65).fill(5))).rejects.toThrow(/65 tokens, more than contextSize \(64\)/);
    // A 100k-token text is refused before it is tokenized (its byte length bounds its tokens from below).
    await expect(context.embed('床'.repeat(100_000))).rejects.toThrow(/more than contextSize/);
    await expect(context.embed('a', { signal: 'x' } as never)).rejects.toThrow(TypeError);
    // The context still works.
    expect((await context.embed('ok')).length).toBe(context.dimension);
  });

  it('10k inputs in one call, concurrent calls in order, abort, dispose during embed', async () => {
    await using context = await model.createEmbeddingContext({ contextSize: 64, batchSize: 2048, threads: 2 });
    const many = Array.from({ length: 10_000 }, (_, i) => `text ${i}`);
    const all = await context.embed(many);
    expect(all).toHaveLength(10_000);
    const again = await context.embed(many[1234]);
    expect(cosine(all[1234], again)).toBeGreaterThan(0.9999);
    // Concurrent calls on one context: queued, each gets its own answers.
    const [a, b, c] = await Promise.all([context.embed('one'), context.embed(['two', 'three']), context.embed('one')]);
    expect(cosine(a, c)).toBeGreaterThan(0.999999);
    expect(b).toHaveLength(2);
    // Abort: queued or running, the call rejects with AbortError; the context goes on.
    const controller = new AbortController();
    const running = expect(context.embed(many, { signal: controller.signal })).rejects.toThrow(AbortError);
    const queued = expect(context.embed('x', { signal: controller.signal })).rejects.toThrow(AbortError);
    setTimeout(() => controller.abort(), 20);
    await running;
    await queued;
    await expect(context.embed('x', { signal: AbortSignal.abort() })).rejects.toThrow(AbortError);
    expect((await context.embed('after')).length).toBe(context.dimension);
    // Dispose while a call runs: it stops, the calls reject, the context is gone.
    const busy = expect(context.embed(many)).rejects.toThrow(AbortError);
    const later = expect(context.embed('later')).rejects.toThrow(DisposedError);
    await new Promise((r) => setTimeout(r, 20));
    await context.dispose();
    await busy;
    await later;
    await expect(context.embed('x')).rejects.toThrow(DisposedError);
    expect(context.disposed).toBe(true);
  }, 300_000);

  it('pooling none refuses outputs over 1 GiB in one call', async () => {
    await using context = await model.createEmbeddingContext({ pooling: 'none', contextSize: 2048, threads: 2 });
    // 1.2M tokens x 256 floats x 4 bytes > 1 GiB.
    const big = Array.from({ length: 600 }, () => new Int32Array(2000).fill(100));
    await expect(context.embed(big)).rejects.toThrow(/more than 1073741824 bytes/);
  });

  it('the model disposes its embedding contexts', async () => {
    const m = await loadModel(f16Path);
    const context = await m.createEmbeddingContext({ threads: 2 });
    await m.dispose();
    expect(context.disposed).toBe(true);
    await expect(context.embed('x')).rejects.toThrow(DisposedError);
  });
});
