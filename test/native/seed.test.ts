// A seed gives the same tokens for the same request whatever the cache holds (issue #13). On some CPUs the
// kernels for one token and for a batch (and for batches of different sizes) round differently, and on this
// MoE model a rounding difference at a router near-tie changes the experts and then the sampled tokens: a
// warm context that evaluated only the prompt's last token sampled other text than a cold one (an AVX-512
// Xeon, token 27). The library evaluates a seeded prompt as a cold context would (whole ubatches aligned to
// position 0, reused only where the cache holds exactly those; the same prompt's kept logits), so these must
// be equal on every CPU and build, not only where the kernels happen to agree.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatSession, createServer, loadModel, type Context, type GenerateOptions, type Model } from '../../dist/index.js';
import { f16Path, reference } from '../helpers.js';

let model: Model;
beforeAll(async () => {
  model = await loadModel(f16Path);
});
afterAll(() => model?.dispose());

// The English fortune: a flat distribution at temperature 1.5, where any difference in the logits shows.
const sampling = { temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 48, stopAtEog: false } satisfies GenerateOptions;
const short = reference.greedy[7].prompt_ids;
// Longer than several ubatches of 16: a recitation and its answer, then the fortune.
const long = [...reference.greedy[0].prompt_ids, ...reference.greedy[0].output_ids, ...short.slice(1)];

async function tokens(context: Context, prompt: number[], options: GenerateOptions) {
  const r = await context.generate(prompt, options).result;
  return { tokens: Array.from(r.tokens), reused: r.reusedTokens, evaluated: r.evaluatedTokens };
}

describe.each([16, 512])('a context with ubatchSize %i', (ubatchSize) => {
  let context: Context;
  beforeAll(async () => {
    context = await model.createContext({ contextSize: 1024, batchSize: 512, ubatchSize, threads: 2 });
  });
  afterAll(() => context?.dispose());

  it.each([
    ['short', short],
    ['long', long],
  ] as const)('%s prompt: cold, warm, after other prompts and after clear() give the same tokens', async (_, prompt) => {
    const opts = { ...sampling, seed: 1234 };
    await context.clear();
    const cold = await tokens(context, prompt, opts);
    expect(cold.evaluated).toBe(prompt.length);

    // The very same prompt: its last logits were kept, nothing is evaluated.
    const warm = await tokens(context, prompt, opts);
    expect(warm).toMatchObject({ tokens: cold.tokens, reused: prompt.length, evaluated: 0 });

    // A prompt sharing all but the last 9 tokens (seeded, then unseeded): only whole ubatches are reused.
    const prefix = prompt.slice(0, prompt.length - 9);
    await context.generate([...prefix, 1000, 1001, 1002], { ...opts, seed: 7 }).result;
    const shared = await tokens(context, prompt, opts);
    expect(shared.tokens).toEqual(cold.tokens);
    expect(shared.reused).toBe(Math.floor(prefix.length / ubatchSize) * ubatchSize);
    await context.generate(prefix, { temperature: 0, maxTokens: 20 }).result;
    expect((await tokens(context, prompt, opts)).tokens).toEqual(cold.tokens);

    await context.clear();
    expect((await tokens(context, prompt, opts)).tokens).toEqual(cold.tokens);
    // The seed matters: another one gives other tokens.
    expect((await tokens(context, prompt, { ...opts, seed: 99 })).tokens).not.toEqual(cold.tokens);
  });

  it('without a seed, a warm context still reuses all it can', async () => {
    await context.clear();
    const first = await context.generate(long, { temperature: 0, maxTokens: 4 }).result;
    // The cache holds the prompt and 3 of the 4 generated tokens (the last one is never decoded).
    const next = await tokens(context, [...long, ...first.tokens.slice(0, 3), 1000], { temperature: 0, maxTokens: 4 });
    expect(next.reused).toBe(long.length + 3);
    expect(next.evaluated).toBe(1);
  });
});

describe('the largest seed', () => {
  it('2^32-2 is a seed like any other; 2^32-1 (llama.cpp\'s "random") is refused', async () => {
    const context = await model.createContext({ contextSize: 256, threads: 2 });
    try {
      const opts = { ...sampling, maxTokens: 16, seed: 2 ** 32 - 2 };
      const a = await tokens(context, short, opts);
      await context.clear();
      expect((await tokens(context, short, opts)).tokens).toEqual(a.tokens);
      expect(() => context.generate(short, { ...opts, seed: 2 ** 32 - 1 })).toThrow(RangeError);
    } finally {
      await context.dispose();
    }
  });
});

describe('a ChatSession turn', () => {
  it('answers the same with a seed whether the history came from earlier turns or from setHistory()', async () => {
    const context = await model.createContext({ contextSize: 1024, ubatchSize: 16, threads: 2 });
    try {
      const chat = new ChatSession(context, { systemPrompt: '你是一个智能助手' });
      await chat.prompt('请背诵《春晓》', { temperature: 0 });
      const history = chat.history;
      const opts = { temperature: 1.5, topK: 0, topP: 1, minP: 0, maxTokens: 40, seed: 42 };
      const warm = await chat.prompt('Tell me a fortune.', opts);

      // A new session on a cleared context with the same history: a cold evaluation of the same prompt.
      await context.clear();
      const fresh = new ChatSession(context, { systemPrompt: '你是一个智能助手' });
      fresh.setHistory(history);
      const cold = await fresh.prompt('Tell me a fortune.', opts);
      expect(cold.text).toBe(warm.text);
      expect(cold.text.length).toBeGreaterThan(0);
    } finally {
      await context.dispose();
    }
  });
});

describe('the server', () => {
  it('answers a seeded request the same cold, warm and next to other requests', async () => {
    const server = await createServer(model, { servedModelName: 'huozi', parallel: 2, contextSize: 2048, threads: 2 });
    const { url } = await server.listen(0);
    try {
      const body = (seed: number, extra = {}) => ({
        model: 'huozi', prompt: 'Tell me a fortune.', max_tokens: 40, temperature: 1.5, top_p: 1, top_k: 0, min_p: 0,
        ignore_eos: true, seed, ...extra,
      });
      const complete = async (b: object) => {
        const r = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(b) });
        expect(r.status).toBe(200);
        return ((await r.json()) as { choices: { text: string }[] }).choices[0].text;
      };
      const cold = await complete(body(5));
      expect(await complete(body(5))).toBe(cold); // warm: the slot holds the prompt
      // Next to an unseeded request that generates at the same time (continuous batching).
      const [beside, other] = await Promise.all([
        complete(body(5)),
        complete({ ...body(0), seed: undefined, max_tokens: 200, prompt: 'Tell me a fortune. Tell me another.' }),
      ]);
      expect(beside).toBe(cold);
      expect(other.length).toBeGreaterThan(0);
      expect(await complete(body(6))).not.toBe(cold);
    } finally {
      await server.close();
    }
  });
});
