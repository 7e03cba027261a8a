import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortError, DisposedError, loadModel, type Model, type ParallelContext } from '../../dist/index.js';
import { EOU, f16Path, reference } from '../helpers.js';

let model: Model;
let expected: number[][];
beforeAll(async () => {
  model = await loadModel(f16Path);
  // What one sequence alone produces, greedy: the reference for every concurrent run below.
  const context = await model.createContext({ contextSize: 1024, threads: 1 });
  expected = [];
  for (const g of reference.greedy) {
    expected.push((await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 48, stopTokens: [EOU] }).result).tokens);
  }
  await context.dispose();
});
afterAll(() => model.dispose());

async function collect(generation: ReturnType<ParallelContext['generate']>) {
  let text = '';
  for await (const chunk of generation) text += chunk;
  return { text, result: await generation.result };
}

describe('ParallelContext', () => {
  it('serves more requests than slots at once, each exactly as if it ran alone', async () => {
    const par = await model.createParallelContext({ parallel: 4, contextSize: 4096, threads: 1 });
    expect(par.parallel).toBe(4);
    expect(par.slotContextSize).toBe(1024);
    const prompts = [...reference.greedy, ...reference.greedy].map((g) => g.prompt_ids);
    const runs = await Promise.all(
      prompts.map((p) => collect(par.generate(p, { temperature: 0, maxTokens: 48, stopTokens: [EOU] }))),
    );
    runs.forEach(({ text, result }, i) => {
      expect(result.tokens).toEqual(expected[i % reference.greedy.length]);
      expect(text).toBe(result.text);
    });
    // Continuous batching: far fewer decode calls than tokens, and all four slots were used.
    const stats = par.stats();
    expect(stats.completed).toBe(prompts.length);
    expect(stats.decodeCalls).toBeLessThan(stats.generatedTokens / 2);
    expect(new Set(runs.map((r) => r.result.slot))).toEqual(new Set([0, 1, 2, 3]));
    expect(stats.busySlots).toBe(0);
    await par.dispose();
  });

  it('sends a follow-up to the slot that holds its prefix and reuses that cache', async () => {
    const par = await model.createParallelContext({ parallel: 2, contextSize: 2048, threads: 1 });
    const g = reference.greedy[8];
    const first = await par.generate(g.prompt_ids.slice(0, 40), { temperature: 0, maxTokens: 4 }).result;
    const second = await par.generate(g.prompt_ids, { temperature: 0, maxTokens: 4 }).result;
    expect(second.slot).toBe(first.slot);
    expect(second.reusedTokens).toBeGreaterThanOrEqual(40);
    // reuseCache: false evaluates the whole prompt again.
    const third = await par.generate(g.prompt_ids, { temperature: 0, maxTokens: 4, reuseCache: false }).result;
    expect(third.reusedTokens).toBe(0);
    expect(third.tokens).toEqual(second.tokens);
    await par.dispose();
  });

  it('cancels a running or waiting request at the next step and frees its slot', async () => {
    // A slot of 32768 tokens: the running generation cannot end by itself (context full) before it is stopped.
    const par = await model.createParallelContext({ parallel: 1, contextSize: 32768, threads: 1 });
    const running = par.generate(reference.greedy[0].prompt_ids, { temperature: 1, maxTokens: 100000, stopAtEog: false });
    const controller = new AbortController();
    const waiting = par.generate(reference.greedy[1].prompt_ids, { maxTokens: 10, signal: controller.signal });
    for await (const _ of running) break; // leaving the loop stops it
    await expect(running.result).rejects.toBeInstanceOf(AbortError);
    controller.abort();
    const error = await waiting.result.catch((e) => e);
    expect(error).toBeInstanceOf(AbortError);
    expect(par.stats().busySlots).toBe(0);
    expect(par.stats().cancelled).toBe(2);
    // The slot serves the next request normally.
    const next = await par.generate(reference.greedy[0].prompt_ids, { temperature: 0, maxTokens: 48, stopTokens: [EOU] }).result;
    expect(next.tokens).toEqual(expected[0]);
    await par.dispose();
  });

  it.each([false, true])('generateChoices (unifiedCache %s): the prompt is evaluated once, and each seeded choice answers as it would alone', async (unifiedCache) => {
    const prompt = reference.greedy[8].prompt_ids;
    const sampling = { temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 24, stopAtEog: false };
    // Each seed alone, in a context of its own: what the choices must give.
    const alone = await model.createParallelContext({ parallel: 1, contextSize: 1024, threads: 1 });
    const want: number[][] = [];
    for (let i = 0; i < 4; i++) want.push(Array.from((await alone.generate(prompt, { ...sampling, seed: 70 + i }).result).tokens));
    await alone.dispose();
    expect(new Set(want.map((t) => t.join())).size).toBe(4);

    const par = await model.createParallelContext({ parallel: 4, contextSize: 4096, unifiedCache, threads: 1 });
    const generations = par.generateChoices(prompt, [0, 1, 2, 3].map((i) => ({ ...sampling, seed: 70 + i })));
    const results = await Promise.all(generations.map((g) => g.result));
    expect(results.map((r) => Array.from(r.tokens))).toEqual(want);
    expect(new Set(results.map((r) => r.slot)).size).toBe(4);
    const stats = par.stats();
    expect(stats.promptTokens).toBe(prompt.length);
    expect(stats.sharedTokens).toBe(3 * prompt.length);
    expect(results.map((r) => r.evaluatedTokens).sort()).toEqual([0, 0, 0, prompt.length]);
    // A text prompt is tokenized once; unseeded choices differ from one another.
    const texts = await Promise.all(par.generateChoices(reference.greedy[3].prompt, [{ maxTokens: 8, temperature: 2 }, { maxTokens: 8, temperature: 2 }]).map((g) => g.result));
    expect(texts[0].promptTokens).toBe(texts[1].promptTokens);
    expect(par.stats().sharedTokens).toBeGreaterThan(3 * prompt.length);
    await par.dispose();
  });

  it('generateChoices: stopping the choice that evaluates the prompt leaves the others to evaluate it', async () => {
    const par = await model.createParallelContext({ parallel: 2, contextSize: 2048, threads: 1 });
    const prompt = reference.greedy[0].prompt_ids;
    const [first, second, third] = par.generateChoices(prompt, [
      { temperature: 0, maxTokens: 48, stopTokens: [EOU] }, { temperature: 0, maxTokens: 48, stopTokens: [EOU] }, { temperature: 0, maxTokens: 48, stopTokens: [EOU] },
    ]);
    first.stop();
    await expect(first.result).rejects.toBeInstanceOf(AbortError);
    expect(Array.from((await second.result).tokens)).toEqual(expected[0]);
    expect(Array.from((await third.result).tokens)).toEqual(expected[0]);
    expect(() => par.generateChoices(prompt, [])).toThrow(TypeError);
    expect(() => par.generateChoices('x', [{}, { addBos: false }])).toThrow(/choices\[1\]\.addBos/);
    expect(() => par.generateChoices(prompt, [{}, { bogus: 1 } as never])).toThrow(TypeError);
    await par.dispose();
  });

  it('a request sharing a long prefix with a busy slot copies its cells instead of evaluating them', async () => {
    const par = await model.createParallelContext({ parallel: 2, contextSize: 4096, threads: 1 });
    const g = reference.greedy[8];
    expect(g.prompt_ids.length).toBeGreaterThan(40);
    // A long answer keeps one slot busy while a prompt that starts with its prompt arrives.
    const busy = par.generate(g.prompt_ids.slice(0, 40), { temperature: 1, maxTokens: 2000, stopAtEog: false });
    const it = busy[Symbol.asyncIterator]();
    await it.next();
    const b = await par.generate(g.prompt_ids, { temperature: 0, maxTokens: 48, stopTokens: [EOU] }).result;
    busy.stop();
    await busy.result.catch(() => {});
    expect(b.reusedTokens).toBeGreaterThanOrEqual(40);
    expect(par.stats().sharedTokens).toBeGreaterThanOrEqual(40);
    expect(Array.from(b.tokens)).toEqual(expected[8]);
    await par.dispose();
  });

  it('rejects what does not fit and bad options with typed errors', async () => {
    await expect(model.createParallelContext({ parallel: 0 })).rejects.toMatchObject({ name: 'RangeError' });
    await expect(model.createParallelContext({ parallel: 4, contextSize: 2 })).rejects.toMatchObject({ name: 'RangeError' });
    await expect(model.createParallelContext({ bogus: 1 } as never)).rejects.toMatchObject({ name: 'TypeError' });
    const par = await model.createParallelContext({ parallel: 2, contextSize: 256, threads: 1 });
    expect(() => par.generate(Array(par.slotContextSize + 1).fill(1000))).toThrow(RangeError);
    expect(() => par.generate([model.vocabularySize])).toThrow(RangeError);
    expect(() => par.generate('x', { bogus: true } as never)).toThrow(TypeError);
    // A generation that reaches the end of its slot stops with contextFull.
    const full = await par.generate(Array(par.slotContextSize - 8).fill(1000), { temperature: 0, stopAtEog: false }).result;
    expect(full.stopReason).toBe('contextFull');
    await par.dispose();
  });

  it('memory(): weights, KV cache and compute per device, measured', async () => {
    const context = await model.createContext({ contextSize: 2048, threads: 1 });
    const par = await model.createParallelContext({ parallel: 2, contextSize: 2048, threads: 1 });
    for (const use of [context.memory(), par.memory()]) {
      const sum = (k: 'model' | 'context' | 'compute') => use.reduce((a, d) => a + d[k], 0);
      // f16 KV cache of 2048 tokens: layers × kv heads × (key + value length) × 2 bytes per token.
      const { layers, kvHeads, embeddingSize, heads } = model.info;
      expect(sum('context')).toBe(2048 * layers * kvHeads * 2 * (embeddingSize / heads) * 2);
      expect(sum('model')).toBeGreaterThan(model.info.size * 0.95);
      expect(sum('compute')).toBeGreaterThan(0);
      for (const d of use) expect(d.total).toBe(d.model + d.context + d.compute);
    }
    await context.dispose();
    await par.dispose();
    expect(() => par.memory()).toThrow(DisposedError);
  });

  it('dispose stops what runs: running and waiting requests reject with DisposedError', async () => {
    const par = await model.createParallelContext({ parallel: 1, contextSize: 32768, threads: 1 });
    const a = par.generate(reference.greedy[0].prompt_ids, { temperature: 1, maxTokens: 100000, stopAtEog: false });
    const b = par.generate(reference.greedy[1].prompt_ids, { maxTokens: 10 });
    await new Promise((r) => setTimeout(r, 50));
    await par.dispose();
    await expect(a.result).rejects.toBeInstanceOf(DisposedError);
    await expect(b.result).rejects.toBeInstanceOf(DisposedError);
    expect(() => par.generate('x')).toThrow(DisposedError);
    await par.dispose();
  });
});
