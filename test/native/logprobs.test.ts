// Logprobs of generated tokens (issue #16): the log-softmax of the raw logits, checked against the logits
// evaluate() returns; top alternatives; the streamed chunks; post-sampling probabilities; both kinds of context.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatSession, loadModel, type Context, type Model, type TokenLogprob } from '../../dist/index.js';
import { demoPath, f16Path } from '../helpers.js';

/** log-softmax of one row of logits, in double precision. */
function logSoftmax(row: Float32Array): Float64Array {
  let max = -Infinity;
  for (const x of row) max = Math.max(max, x);
  let sum = 0;
  for (const x of row) sum += Math.exp(x - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, (x) => x - lse);
}

describe.each([
  ['the demo model (q4_0)', demoPath],
  ['the f16 fixture', f16Path],
])('on %s', (_, path) => {
  let model: Model;
  let context: Context;
  beforeAll(async () => {
    model = await loadModel(path);
    context = await model.createContext({ contextSize: 512, threads: 2 });
  });
  afterAll(() => model.dispose());

  it('greedy logprobs equal the log-softmax of the logits evaluate() returns, within 1e-4', async () => {
    const prompt = model.tokenize('The capital of France is');
    const r = await context.generate(prompt, { temperature: 0, maxTokens: 24, topLogprobs: 5, stopAtEog: false }).result;
    expect(r.logprobs).toHaveLength(r.tokens.length);
    // Evaluated as the generation was (the prompt in one batch, then one token at a time): the same shapes give
    // the same logits (the f16 model's logits differ by ~1e-2 between one batch of all and one row at a time).
    await context.clear();
    const n = model.vocabularySize;
    const rows: Float32Array[] = [];
    const first = (await context.evaluate(prompt, { logits: 'all' }))!;
    rows.push(first.subarray((prompt.length - 1) * n, prompt.length * n));
    for (const token of r.tokens.slice(0, -1)) rows.push((await context.evaluate([token], { logits: 'all' }))!);
    let worst = 0;
    r.logprobs!.forEach((entry, i) => {
      const ls = logSoftmax(rows[i]);
      expect(entry.token).toBe(r.tokens[i]);
      worst = Math.max(worst, Math.abs(entry.logprob - ls[entry.token]));
      expect(entry.top).toHaveLength(5);
      expect(entry.top[0].token).toBe(entry.token); // greedy took the most likely
      for (const t of entry.top) worst = Math.max(worst, Math.abs(t.logprob - ls[t.token]));
      // The top are the five largest, sorted.
      const best = Array.from(ls.keys()).sort((a, b) => ls[b] - ls[a] || a - b).slice(0, 5);
      expect(entry.top.map((t) => t.token)).toEqual(best);
    });
    console.log(`largest |logprob - log-softmax(evaluate)|: ${worst.toExponential(2)} over ${r.tokens.length} tokens`);
    expect(worst).toBeLessThan(1e-4);
  });

  it('gives each entry its text and bytes, and the sampled token even when it is not among the top', async () => {
    const r = await context.generate('Once upon a time', { temperature: 1.5, seed: 11, maxTokens: 40, topLogprobs: 1 }).result;
    let outside = 0;
    for (const [i, e] of r.logprobs!.entries()) {
      expect(e.token).toBe(r.tokens[i]);
      expect(e.top).toHaveLength(1);
      expect(e.logprob).toBeLessThanOrEqual(e.top[0].logprob);
      if (e.top[0].token !== e.token) outside++;
      const decoded = Buffer.from(e.bytes).toString('utf8');
      if (!decoded.includes('\uFFFD')) expect(e.text).toBe(decoded);
    }
    expect(outside).toBeGreaterThan(0);
    // The bytes of the tokens that are text (not control tokens) make up the text, but for a character the
    // generation ended inside of.
    const control = new Set(model.specialTokens.values());
    const textual = r.logprobs!.filter((e) => !control.has(e.token));
    const decoded = Buffer.concat(textual.map((e) => Buffer.from(e.bytes))).toString('utf8');
    expect(decoded.startsWith(r.text)).toBe(true);
    expect(decoded.length - r.text.length).toBeLessThanOrEqual(1);
    // topLogprobs 0: no alternatives, the token's own logprob only.
    const bare = await context.generate('Once upon a time', { temperature: 0, maxTokens: 4, logprobs: true }).result;
    for (const e of bare.logprobs!) expect(e.top).toEqual([]);
  });

  it.each([0, 16])('streams chunks whose logprobs, put together, are result.logprobs (streamIntervalMs %i)', async (streamIntervalMs) => {
    const generation = context.generate('Hello there,', { temperature: 0.9, seed: 5, maxTokens: 40, topLogprobs: 2, streamIntervalMs });
    const chunks: { text: string; logprobs?: TokenLogprob[] }[] = [];
    for await (const chunk of generation.chunks()) chunks.push(chunk);
    const result = await generation.result;
    expect(chunks.map((c) => c.text).join('')).toBe(result.text);
    expect(chunks.flatMap((c) => c.logprobs ?? [])).toEqual(result.logprobs);
    for (const c of chunks) expect(c.logprobs).toBeDefined();
  });

  it('post-sampling probabilities sum to 1 over the candidates when topLogprobs covers them', async () => {
    const options = { temperature: 1, topK: 5, topP: 1, minP: 0, seed: 3, maxTokens: 20, topLogprobs: 5, postSamplingProbs: true };
    const r = await context.generate('The weather today', options).result;
    for (const e of r.logprobs!) {
      const sum = e.top.reduce((s, t) => s + Math.exp(t.logprob), 0);
      expect(sum).toBeCloseTo(1, 4);
      expect(e.top.some((t) => t.token === e.token && Math.abs(t.logprob - e.logprob) < 1e-6)).toBe(true);
    }
    // The same draws as without logprobs.
    const plain = await context.generate('The weather today', { ...options, topLogprobs: undefined, postSamplingProbs: undefined }).result;
    expect(plain.tokens).toEqual(r.tokens);
    // Greedy draws its token for sure.
    const greedy = await context.generate('The weather today', { temperature: 0, maxTokens: 3, postSamplingProbs: true, topLogprobs: 3 }).result;
    for (const e of greedy.logprobs!) expect(e).toMatchObject({ logprob: 0, top: [{ token: e.token, logprob: 0 }] });
  });

  it('has no logprobs without the option, in the result or the chunks', async () => {
    const generation = context.generate('Hi', { maxTokens: 5, seed: 1 });
    for await (const chunk of generation.chunks()) expect('logprobs' in chunk).toBe(false);
    expect('logprobs' in (await generation.result)).toBe(false);
  });

  it('gives the same logprobs on a ParallelContext, and through a chat', async () => {
    const prompt = model.tokenize('The capital of France is');
    const single = await context.generate(prompt, { temperature: 0, maxTokens: 12, topLogprobs: 3, reuseCache: false }).result;
    const parallel = await model.createParallelContext({ contextSize: 512, parallel: 2, threads: 2 });
    try {
      const [a, b] = await Promise.all([
        parallel.generate(prompt, { temperature: 0, maxTokens: 12, topLogprobs: 3 }).result,
        parallel.generate(prompt, { temperature: 0, maxTokens: 12, topLogprobs: 3, seed: 1 }).result,
      ]);
      for (const other of [a, b]) {
        expect(other.tokens).toEqual(single.tokens);
        other.logprobs!.forEach((e, i) => {
          expect(Math.abs(e.logprob - single.logprobs![i].logprob)).toBeLessThan(1e-4);
          expect(e.top.map((t) => t.token)).toEqual(single.logprobs![i].top.map((t) => t.token));
        });
      }
      const chunks: TokenLogprob[] = [];
      const g = parallel.generate(prompt, { temperature: 0, maxTokens: 12, topLogprobs: 3, streamIntervalMs: 0 });
      for await (const c of g.chunks()) chunks.push(...(c.logprobs ?? []));
      expect(chunks).toEqual((await g.result).logprobs);
    } finally {
      await parallel.dispose();
    }
    const chat = new ChatSession(context);
    const answer = await chat.prompt('Hello', { temperature: 0, maxTokens: 8, logprobs: true });
    expect(answer.generation.logprobs).toHaveLength(answer.generation.tokens.length);
  });
});
