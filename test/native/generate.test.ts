import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortError, loadModel, type Context, type Model } from '../../dist/index.js';
import { compareGreedyWithHf, EOU, f16Path, reference, teacherForcedRows } from '../helpers.js';

let model: Model;
let context: Context;
beforeAll(async () => {
  model = await loadModel(f16Path);
  context = await model.createContext({ contextSize: 1024, threads: 2 });
});
afterAll(() => model.dispose());

describe('greedy generation reproduces the HF model', () => {
  // Every step of HF's answer is checked, teacher-forced; where HF's own top-2 margin is a near-tie, our pick
  // may be HF's second best instead (compareGreedyWithHf in test/helpers.ts says how that is established).
  it.each(reference.greedy.map((g, i) => [i, g.prompt.slice(-24).replace(/\n/g, '\\n'), g] as const))(
    'greedy[%i] …%s',
    async (_, __, g) => {
      const result = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 64, stopTokens: [EOU] }).result;
      const rows = await teacherForcedRows(context, model.vocabularySize, g);
      const c = compareGreedyWithHf(g, result.tokens, rows);
      console.log(
        `${c.steps} steps teacher-forced, max |margin - HF's| ${c.worstMarginDiff.toFixed(4)} (step ${c.worstStep}); ` +
          `generation equals HF's for ${c.agreeing}${c.divergence ? `, then ${c.divergence}` : ''}`,
      );
      expect(c.problems).toEqual([]);
      expect(c.steps).toBe(g.output_ids.length);
      expect(c.steps).toBeGreaterThan(0);
      if (c.agreeing === g.output_ids.length) {
        expect(result.tokens).toEqual(g.output_ids);
        // HF's decode renders the stop token and a character cut at the 64-token limit (as U+FFFD); our text
        // has neither: the stop token is not text, and an incomplete character is never emitted.
        expect(result.text).toBe(g.output_text.replace('<|endofutterance|>', '').replace(/\uFFFD+$/, ''));
      }
    },
  );
});

describe('streaming', () => {
  it('reassembles to the final text, with whole characters in every chunk', async () => {
    const g = reference.greedy[0];
    const generation = context.generate(g.prompt_ids, { temperature: 0, maxTokens: 64, stopTokens: [EOU] });
    const chunks: string[] = [];
    for await (const chunk of generation) chunks.push(chunk);
    const result = await generation.result;
    expect(chunks.join('')).toBe(result.text);
    for (const chunk of chunks) expect(chunk).not.toContain('\uFFFD');
    // The recitation contains characters spread over several byte-fallback tokens (e.g. 葳 as 3 tokens).
    expect(result.tokens.length).toBeGreaterThan([...result.text].length);
  });

  it('stops at a stop string and leaves it out of the text', async () => {
    const g = reference.greedy[0];
    const result = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 64, stopStrings: ['张九龄'] }).result;
    expect(result.stopReason).toBe('stopString');
    expect(result.stopString).toBe('张九龄');
    expect(result.text).toBe('《感遇・其一》\n');
  });

  it('stops at a special token named as a stop string', async () => {
    const g = reference.greedy[8];
    const result = await context.generate(g.prompt_ids, { temperature: 0, stopStrings: ['<|endofutterance|>'] }).result;
    expect(result).toMatchObject({ stopReason: 'stopToken', stopToken: EOU, text: '作者是王维。' });
  });

  it('honours maxTokens, eog and stop tokens', async () => {
    const g = reference.greedy[0];
    const short = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 3 }).result;
    expect(short).toMatchObject({ stopReason: 'maxTokens' });
    expect(short.tokens).toHaveLength(3);
    const stopped = await context.generate(reference.greedy[8].prompt_ids, { temperature: 0, stopTokens: [EOU] }).result;
    expect(stopped).toMatchObject({ stopReason: 'stopToken', stopToken: EOU });
  });

  // Seeded sampling: test/native/seed.test.ts (cold, warm, after clear(), a chat turn, the server).
});

describe('KV cache reuse', () => {
  it('evaluates only what the cache does not hold', async () => {
    const g = reference.greedy[1];
    await context.clear();
    const first = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 8 }).result;
    expect(first.reusedTokens).toBe(0);
    expect(first.evaluatedTokens).toBe(g.prompt_ids.length);
    // The same prompt again: its last logits were kept with the cache, nothing is evaluated.
    const again = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 8 }).result;
    expect(again.reusedTokens).toBe(g.prompt_ids.length);
    expect(again.evaluatedTokens).toBe(0);
    expect(again.tokens).toEqual(first.tokens);
    // A longer prompt sharing it: only the new tokens are evaluated.
    const longer = await context.generate([...g.prompt_ids, ...first.tokens.slice(0, 3)], { temperature: 0, maxTokens: 4 }).result;
    expect(longer.reusedTokens).toBe(g.prompt_ids.length + 2);
    expect(longer.evaluatedTokens).toBe(1);
    const fresh = await context.generate(g.prompt_ids, { temperature: 0, maxTokens: 8, reuseCache: false }).result;
    expect(fresh.evaluatedTokens).toBe(g.prompt_ids.length);
  });
});

describe('abort', () => {
  it('stops within one token and leaves the context usable', async () => {
    const controller = new AbortController();
    const generation = context.generate([1, 1000], {
      temperature: 0, stopAtEog: false, maxTokens: 100_000, signal: controller.signal,
    });
    let chunks = 0;
    await expect(
      (async () => {
        for await (const _ of generation) if (++chunks === 3) controller.abort();
      })(),
    ).rejects.toBeInstanceOf(AbortError);
    const error = await generation.result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
    const partial = (error as AbortError & { result: { tokens: number[]; text: string } }).result;
    expect(partial.tokens.length).toBeLessThan(100_000);
    expect(partial.text.length).toBeGreaterThan(0);
    // The cache holds the prompt and the sampled tokens, except at most the one being decoded when the abort
    // came: nothing ran past it, and nothing half-done stayed behind.
    const cached = context.tokens;
    expect([partial.tokens.length + 1, partial.tokens.length + 2]).toContain(cached.length);
    expect(cached).toEqual([1, 1000, ...partial.tokens].slice(0, cached.length));

    const g = reference.greedy[8];
    const after = await context.generate(g.prompt_ids, { temperature: 0, stopTokens: [EOU] }).result;
    expect(after.tokens).toEqual(g.output_ids);
  });

  it('does not start an operation whose signal aborted while it waited in the queue', async () => {
    const controller = new AbortController();
    const first = context.generate([1, 1000], { temperature: 0, stopAtEog: false, maxTokens: 200 });
    const second = context.generate([1, 1001], { temperature: 0, maxTokens: 10, signal: controller.signal });
    controller.abort();
    await expect(second.result).rejects.toBeInstanceOf(AbortError);
    expect((await first.result).tokens).toHaveLength(200);
  });

  it('interrupts a long prompt evaluation inside llama_decode', async () => {
    await context.clear();
    const controller = new AbortController();
    const prompt = [1, ...Array.from({ length: 1000 }, (_, i) => 1000 + (i % 900))];
    const generation = context.generate(prompt, { temperature: 0, maxTokens: 1, signal: controller.signal, reuseCache: false });
    setImmediate(() => controller.abort());
    const error = await generation.result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
    const cached = context.tokens;
    expect(cached).toEqual(prompt.slice(0, cached.length));
    const g = reference.greedy[8];
    expect((await context.generate(g.prompt_ids, { temperature: 0, stopTokens: [EOU] }).result).tokens).toEqual(g.output_ids);
  });

  it('rejects at once when the signal is already aborted', async () => {
    const generation = context.generate([1, 1000], { signal: AbortSignal.abort() });
    await expect(generation.result).rejects.toBeInstanceOf(AbortError);
  });

  it('stops when the consumer breaks out of the loop', async () => {
    const generation = context.generate([1, 1000], { temperature: 0, stopAtEog: false, maxTokens: 100_000 });
    for await (const _ of generation) break;
    const error = await generation.result.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(AbortError);
  });
});

describe('evaluate', () => {
  it('queues concurrent operations instead of failing', async () => {
    await context.clear();
    const [a, b] = await Promise.all([
      context.generate([1, 1005, 1000], { temperature: 0, maxTokens: 4, reuseCache: false }).result,
      context.generate([1, 1005, 1000], { temperature: 0, maxTokens: 4, reuseCache: false }).result,
    ]);
    expect(a.tokens).toEqual(b.tokens);
  });
});
