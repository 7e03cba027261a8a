// The one validator of context options (lib/context-options.ts), for both kinds of context, on model-like
// objects: the rules that depend on the model (non-causal attention, the KV-cache memory guard) without a GGUF.
import { describe, expect, it } from 'vitest';
import { checkContextOptions, type ContextModel } from '../../dist/context-options.js';
import { InsufficientMemoryError } from '../../dist/errors.js';

function modelLike({ causal = true, gpuOffload = true, trainContextSize = 32768, layers = 4 } = {}): ContextModel {
  return {
    info: { trainContextSize, layers, heads: 4, kvHeads: 2, embeddingSize: 256 },
    metadata: { 'general.architecture': 'llama', ...(causal ? {} : { 'llama.attention.causal': 'false' }) },
    systemInfo: { gpuOffload },
  };
}

const kinds = ['single', 'parallel'] as const;

describe('checkContextOptions', () => {
  it('gives both kinds the same defaults, a parallel context one slot of them per slot', () => {
    const single = checkContextOptions(modelLike(), undefined, 'single');
    expect(single).toMatchObject({ contextSize: 4096, batchSize: 2048, ubatchSize: 512, flashAttention: -1, collectImatrix: false });
    expect(single.batchThreads).toBe(single.threads);
    const parallel = checkContextOptions(modelLike(), undefined, 'parallel');
    expect(parallel).toMatchObject({ parallel: 4, contextSize: 16384, unifiedCache: false, batchSize: 2048, ubatchSize: 512 });
    expect(checkContextOptions(modelLike(), { unifiedCache: true }, 'parallel').contextSize).toBe(4096);
    expect(checkContextOptions(modelLike({ trainContextSize: 1024 }), { parallel: 2 }, 'parallel').contextSize).toBe(2048);
  });

  it.each(kinds)('refuses ubatchSize other than batchSize for a non-causal model (%s)', (kind) => {
    const model = modelLike({ causal: false });
    const refused = () => checkContextOptions(model, { contextSize: 256, batchSize: 64, ubatchSize: 16 }, kind);
    expect(refused).toThrow(RangeError);
    expect(refused).toThrow('Expected ubatchSize equal to batchSize (64) for this non-causal model for ubatchSize but received 16 of type number');
    expect(checkContextOptions(model, { contextSize: 256, batchSize: 64 }, kind).ubatchSize).toBe(64);
    expect(checkContextOptions(model, { contextSize: 256, batchSize: 64, ubatchSize: 64 }, kind).ubatchSize).toBe(64);
    // A causal model takes any ubatchSize up to batchSize.
    expect(checkContextOptions(modelLike(), { contextSize: 256, batchSize: 64, ubatchSize: 16 }, kind).ubatchSize).toBe(16);
  });

  it.each(kinds)('checks the shared options the same way (%s)', (kind) => {
    const model = modelLike();
    expect(() => checkContextOptions(model, { contextSize: 256, batchSize: 512 }, kind)).toThrow(
      'Expected positive integer no larger than contextSize (256) for batchSize but received 512 of type number',
    );
    expect(() => checkContextOptions(model, { batchSize: 64, ubatchSize: 128 }, kind)).toThrow(
      'Expected positive integer no larger than batchSize (64) for ubatchSize but received 128 of type number',
    );
    expect(() => checkContextOptions(model, { threads: 0 }, kind)).toThrow(RangeError);
    expect(() => checkContextOptions(model, { flashAttention: 'on' }, kind)).toThrow(RangeError);
    expect(() => checkContextOptions(model, { contextSize: 1.5 }, kind)).toThrow(RangeError);
  });

  it('keeps the rules of each kind to that kind', () => {
    const model = modelLike();
    expect(() => checkContextOptions(model, { parallel: 2 }, 'single')).toThrow('Unknown option "parallel" in options.');
    expect(() => checkContextOptions(model, { unifiedCache: true }, 'single')).toThrow('Unknown option "unifiedCache" in options.');
    expect(() => checkContextOptions(model, { collectImatrix: true }, 'parallel')).toThrow('Unknown option "collectImatrix" in options.');
    expect(checkContextOptions(model, { collectImatrix: true }, 'single').collectImatrix).toBe(true);
    // A slot needs a token of the batch and of the cache.
    expect(() => checkContextOptions(model, { parallel: 8, batchSize: 4 }, 'parallel')).toThrow(
      'Expected integer at least parallel (8) for batchSize but received 4 of type number',
    );
    expect(() => checkContextOptions(model, { parallel: 8, contextSize: 4 }, 'parallel')).toThrow(RangeError);
    expect(checkContextOptions(model, { batchSize: 1, contextSize: 4 }, 'single').batchSize).toBe(1);
  });

  it.each(kinds)('refuses a KV cache larger than free memory without a GPU, before anything is allocated (%s)', (kind) => {
    // 2^24 tokens × 512 layers × 2 KV heads × (64 + 64) × 2 bytes: 4 TiB.
    const huge = { contextSize: 1 << 24, batchSize: 512 };
    expect(() => checkContextOptions(modelLike({ gpuOffload: false, layers: 512 }), huge, kind)).toThrow(InsufficientMemoryError);
    expect(() => checkContextOptions(modelLike({ gpuOffload: false, layers: 512 }), huge, kind)).toThrow(
      /^A context of 16777216 tokens needs 4096\.00 GiB for its KV cache, but only [\d.]+ GiB of memory is available$/,
    );
    // With a GPU the KV cache is llama.cpp's to place.
    expect(checkContextOptions(modelLike({ gpuOffload: true, layers: 512 }), huge, kind).contextSize).toBe(1 << 24);
  });
});
