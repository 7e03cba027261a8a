// Every caller input that could reach a llama.cpp assert or a crash gets a typed error instead, and the
// process (this test file's fork) keeps working afterwards.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ContextOverflowError, DisposedError, GgufError, loadModel, ModelLoadError, type Context, type Model,
} from '../../dist/index.js';
import { f16Path } from '../helpers.js';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

let model: Model;
let context: Context;
beforeAll(async () => {
  model = await loadModel(f16Path);
  context = await model.createContext({ contextSize: 256, batchSize: 64 });
});
afterAll(() => model.dispose());

const typeErr = { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' };
const rangeErr = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };

describe('loadModel throws on invalid arguments', () => {
  it('rejects bad paths and options', async () => {
    await expect(loadModel(42 as never)).rejects.toMatchObject(typeErr);
    await expect(loadModel('')).rejects.toMatchObject(rangeErr);
    await expect(loadModel(f16Path, { gpuLayers: -2 })).rejects.toMatchObject(rangeErr);
    await expect(loadModel(f16Path, { gpuLayers: 1.5 })).rejects.toMatchObject(rangeErr);
    await expect(loadModel(f16Path, { useMmap: 'yes' as never })).rejects.toMatchObject(typeErr);
    await expect(loadModel(f16Path, { gpuLayer: 3 } as never)).rejects.toThrow('Did you mean "gpuLayers"?');
    await expect(loadModel(f16Path, { signal: {} as never })).rejects.toMatchObject(typeErr);
  });

  it('gives ModelLoadError for a missing file and GgufError for a non-GGUF one', async () => {
    const missing = await loadModel('/nonexistent/model.gguf').catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(ModelLoadError);
    expect((missing as ModelLoadError).code).toBe('ERR_HUOZI_MODEL_LOAD');
    expect((missing as Error).message).toMatch(/\/nonexistent\/model\.gguf.*ENOENT/);
    const dir = mkdtempSync(join(tmpdir(), 'huozi-'));
    const junk = join(dir, 'junk.gguf');
    writeFileSync(junk, 'this is not a gguf file at all');
    const error = await loadModel(junk).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GgufError);
    expect(error).toMatchObject({ code: 'ERR_HUOZI_GGUF', offset: 0 });
    expect((error as Error).message).toMatch(/not a GGUF file/);
  });

  it('turns an exception thrown by onProgress into a rejected load, not an uncaught exception', async () => {
    const boom = new Error('progress callback failed');
    await expect(loadModel(f16Path, { onProgress: () => { throw boom; } })).rejects.toBe(boom);
  });

  it('aborts a load through its signal', async () => {
    await expect(loadModel(f16Path, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ABORT_ERR' });
  });
});

describe('createContext throws on invalid arguments', () => {
  it.each([
    [{ contextSize: 0 }, rangeErr],
    [{ contextSize: -5 }, rangeErr],
    [{ contextSize: 1.5 }, rangeErr],
    [{ contextSize: '512' }, typeErr],
    [{ batchSize: 512, contextSize: 256 }, rangeErr],
    [{ batchSize: 0 }, rangeErr],
    [{ ubatchSize: 1024, batchSize: 512 }, rangeErr],
    [{ threads: 0 }, rangeErr],
    [{ threads: 10_000 }, rangeErr],
    [{ batchThreads: -1 }, rangeErr],
    [{ flashAttention: 'on' }, rangeErr],
    [{ contextSise: 512 }, typeErr],
  ])('%j', async (options, expected) => {
    await expect(model.createContext(options as never)).rejects.toMatchObject(expected);
  });
});

describe('tokenize and detokenize throw on invalid arguments', () => {
  it('rejects wrong types and out-of-vocabulary ids', () => {
    expect(() => model.tokenize(5 as never)).toThrow(expect.objectContaining(typeErr));
    expect(() => model.tokenize('x', { parseSpecial: 1 } as never)).toThrow(expect.objectContaining(typeErr));
    expect(() => model.detokenize([1, 2050])).toThrow(expect.objectContaining(rangeErr));
    expect(() => model.detokenize([-1])).toThrow(expect.objectContaining(rangeErr));
    expect(() => model.detokenize([1.5])).toThrow(expect.objectContaining(rangeErr));
    expect(() => model.detokenize(['1'] as never)).toThrow(expect.objectContaining(typeErr));
    expect(() => model.detokenize('abc' as never)).toThrow(expect.objectContaining(typeErr));
    expect(() => model.isEndOfGeneration(99999)).toThrow(expect.objectContaining(rangeErr));
  });

  it('handles text with NUL bytes and lone surrogates', () => {
    expect(model.tokenize('a\0b').length).toBeGreaterThan(1);
    expect(model.tokenize('\uD800x').length).toBeGreaterThan(1);
  });
});

describe('generate and evaluate throw on invalid arguments', () => {
  it.each([
    ['an empty prompt', [], {}, rangeErr],
    ['an empty token array', new Int32Array(0), {}, rangeErr],
    ['a token id past the vocabulary', [1, 2050], {}, rangeErr],
    ['a negative token id', [1, -3], {}, rangeErr],
    ['a prompt longer than the context', Array(300).fill(1000), {}, rangeErr],
    ['a non-array prompt', 42, {}, typeErr],
    ['negative maxTokens', [1], { maxTokens: -1 }, rangeErr],
    ['NaN temperature', [1], { temperature: NaN }, rangeErr],
    ['topP above 1', [1], { topP: 1.5 }, rangeErr],
    ['zero repeatPenalty', [1], { repeatPenalty: 0 }, rangeErr],
    ['a stop token past the vocabulary', [1], { stopTokens: [5000] }, rangeErr],
    ['non-string stop strings', [1], { stopStrings: [1] }, typeErr],
    ['a seed past 32 bits', [1], { seed: 2 ** 33 }, rangeErr],
    ['topLogprobs past 20', [1], { topLogprobs: 21 }, rangeErr],
    ['a NaN logit bias', [1], { logitBias: { 5: NaN } }, rangeErr],
    ['a logit bias past 100', [1], { logitBias: new Map([[5, 101]]) }, rangeErr],
    ['a logit bias for a token past the vocabulary', [1], { logitBias: { 5000: 1 } }, rangeErr],
    ['a number as grammar', [1], { grammar: 5 }, typeErr],
    ['both grammar and jsonSchema', [1], { grammar: 'root ::= "a"', jsonSchema: { type: 'string' } }, typeErr],
    ['a misspelled option', [1], { maxToken: 5 }, typeErr],
  ])('%s', (_, prompt, options, expected) => {
    expect(() => context.generate(prompt as never, options as never)).toThrow(expect.objectContaining(expected));
  });

  it('rejects evaluate() input that would trip llama.cpp', async () => {
    expect(() => context.evaluate([])).toThrow(expect.objectContaining(rangeErr));
    expect(() => context.evaluate([70000])).toThrow(expect.objectContaining(rangeErr));
    expect(() => context.evaluate([1], { logits: 'some' as never })).toThrow(expect.objectContaining(rangeErr));
    await context.clear();
    await expect(context.evaluate(Array(257).fill(1000))).rejects.toBeInstanceOf(ContextOverflowError);
    await context.evaluate(Array(200).fill(1000), { logits: 'none' });
    await expect(context.evaluate(Array(57).fill(1000))).rejects.toBeInstanceOf(ContextOverflowError);
    expect(context.tokens).toHaveLength(200);
    // A batch larger than batchSize (64) is split, never handed to llama_decode whole.
    await context.clear();
    const all = await context.evaluate(Array(150).fill(1000), { logits: 'all' });
    expect(all).toHaveLength(150 * model.vocabularySize);
  });

  it('stops with contextFull instead of overrunning the context', async () => {
    await context.clear();
    const result = await context.generate([1, 1000], { temperature: 0, stopAtEog: false }).result;
    expect(result.stopReason).toBe('contextFull');
    expect(context.tokens).toHaveLength(256);
    await expect(context.eraseFrom(-1)).rejects.toMatchObject(rangeErr);
  });
});

describe('use after dispose', () => {
  it('gives DisposedError for a disposed context and model, and dispose is idempotent', async () => {
    const m = await loadModel(f16Path);
    const c = await m.createContext({ contextSize: 128 });
    const running = c.generate([1, 1000], { temperature: 0, stopAtEog: false, maxTokens: 100_000 });
    const queued = c.generate([1, 1001], { temperature: 0, maxTokens: 4 });
    await running[Symbol.asyncIterator]().next(); // it is generating now
    await m.dispose(); // disposes the context first, stopping its generation
    await expect(running.result).rejects.toMatchObject({ code: 'ABORT_ERR' });
    await expect(queued.result).rejects.toBeInstanceOf(DisposedError);
    expect(c.disposed).toBe(true);
    expect(m.disposed).toBe(true);
    expect(() => c.generate([1])).toThrow(DisposedError);
    expect(() => c.tokens).toThrow(DisposedError);
    expect(() => c.evaluate([1])).toThrow(DisposedError);
    expect(() => m.tokenize('x')).toThrow(DisposedError);
    await expect(m.createContext()).rejects.toBeInstanceOf(DisposedError);
    await c.dispose();
    await m.dispose();
  });
});
