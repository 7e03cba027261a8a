// A model whose attention is not causal (`<arch>.attention.causal` = false) must see each batch in one ubatch, or
// llama_decode asserts and the process dies. Both kinds of context take the rule from one validator; this checks
// it on a real file: huozi-tiny's shape, one layer, zero weights, with the key set.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GgufValueType, loadModel, synthModel, writeGguf, type Model } from '../../dist/index.js';
import { writerTensorBytes } from '../../dist/gguf/writer.js';

const dir = mkdtempSync(join(tmpdir(), 'huozi-non-causal-'));
let model: Model;

beforeAll(async () => {
  const { metadata, plan } = synthModel({ shape: 'tiny', type: 'f16', layers: 1 });
  metadata.set('llama.attention.causal', { type: GgufValueType.BOOL, value: false });
  const path = join(dir, 'non-causal.gguf');
  await writeGguf(
    path,
    metadata,
    plan.map((p) => {
      const t = { name: p.name, dims: p.dims, type: p.type.id };
      return { ...t, data: () => [new Uint8Array(Number(writerTensorBytes(t)))] };
    }),
  );
  model = await loadModel(path);
});
afterAll(async () => {
  await model?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

const refusal = 'Expected ubatchSize equal to batchSize (64) for this non-causal model for ubatchSize but received 16 of type number';

describe('a non-causal model', () => {
  it('is one: llama.cpp reads the key', () => {
    expect(model.metadata['llama.attention.causal']).toBe('false');
  });

  it('gets ubatchSize = batchSize by default, and any other ubatchSize is refused (Context)', async () => {
    await expect(model.createContext({ contextSize: 256, batchSize: 64, ubatchSize: 16, threads: 1 })).rejects.toThrow(refusal);
    const context = await model.createContext({ contextSize: 256, batchSize: 64, threads: 1 });
    expect(context.ubatchSize).toBe(64);
    await context.dispose();
  });

  it('is refused a ParallelContext with ubatchSize other than batchSize, and served with them equal', async () => {
    await expect(
      model.createParallelContext({ parallel: 2, contextSize: 256, batchSize: 64, ubatchSize: 16, threads: 1 }),
    ).rejects.toThrow(RangeError);
    await expect(
      model.createParallelContext({ parallel: 2, contextSize: 256, batchSize: 64, ubatchSize: 16, threads: 1 }),
    ).rejects.toThrow(refusal);
    const par = await model.createParallelContext({ parallel: 2, contextSize: 256, batchSize: 64, threads: 1 });
    // Two prompts of 24 tokens, decoded in one batch of 48: with ubatchSize 16 llama_decode would abort the process.
    const prompts = [0, 1].map((p) => [1, ...Array.from({ length: 23 }, (_, i) => 10 + 30 * p + i)]);
    const results = await Promise.all(
      prompts.map((prompt) => par.generate(prompt, { temperature: 0, maxTokens: 3, stopAtEog: false }).result),
    );
    for (const r of results) expect(r.tokens).toHaveLength(3);
    await par.dispose();
  });
});
