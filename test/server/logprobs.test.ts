// logprobs, logit_bias, n and seed on the server, in OpenAI's shapes (chat's `logprobs.content`, the legacy
// completions object), compared with what the library itself reports for the same request.
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { huoziTemplate } from '../../dist/index.js';
import { serveTinyModel } from './serve.js';

const served = serveTinyModel({ parallel: 4, contextSize: 4096, chatTemplate: 'huozi' });

const messages = [{ role: 'user' as const, content: '请背诵《静夜思》' }];

describe('chat logprobs', () => {
  it('the shape: every token with its logprob, bytes and top_logprobs; the tokens make the content', async () => {
    const completion = await served.client.chat.completions.create({ model: 'huozi', messages, temperature: 0, max_tokens: 24, logprobs: true, top_logprobs: 3 });
    const choice = completion.choices[0];
    const content = choice.logprobs!.content!;
    expect(content.length).toBe(completion.usage!.completion_tokens - (choice.finish_reason === 'stop' ? 1 : 0));
    expect(Buffer.from(content.flatMap((t) => t.bytes!)).toString('utf8')).toBe(choice.message.content);
    for (const t of content) {
      expect(t.logprob).toBeLessThanOrEqual(0);
      expect(t.top_logprobs).toHaveLength(3);
      // Greedy: the token is the most likely one.
      expect(t.top_logprobs[0].token).toBe(t.token);
      expect(t.top_logprobs[0].logprob).toBeCloseTo(t.logprob, 6);
      expect(t.top_logprobs[1].logprob).toBeLessThanOrEqual(t.top_logprobs[0].logprob);
    }
  });

  it("equal within 1e-4 to the library's logprobs for the same prompt and options", async () => {
    const seed = 11;
    const body = { model: 'huozi', messages, temperature: 1, seed, max_tokens: 16, logprobs: true, top_logprobs: 5 };
    const r = await served.post(body);
    const text = huoziTemplate.render(messages, true).map((s) => s.text).join('');
    const ids = served.model.tokenize(text, { parseSpecial: true });
    expect(r.json.usage.prompt_tokens).toBe(ids.length);
    const context = await served.model.createContext({ contextSize: 1024, threads: 1 });
    try {
      const result = await context.generate(ids, {
        temperature: 1, seed, maxTokens: 16, logprobs: true, topLogprobs: 5, stopTokens: [served.model.specialTokens.get('<|endofutterance|>')!],
      }).result;
      const ours = r.json.choices[0].logprobs.content as { token: string; logprob: number; top_logprobs: { token: string; logprob: number }[] }[];
      expect(ours.length).toBeGreaterThan(3);
      for (let i = 0; i < ours.length; i++) {
        const lib = result.logprobs![i];
        expect(ours[i].token).toBe(lib.text);
        expect(Math.abs(ours[i].logprob - lib.logprob)).toBeLessThan(1e-4);
        ours[i].top_logprobs.forEach((alt, k) => {
          expect(alt.token).toBe(lib.top[k].text);
          expect(Math.abs(alt.logprob - lib.top[k].logprob)).toBeLessThan(1e-4);
        });
      }
    } finally {
      await context.dispose();
    }
  });

  it('streamed: each chunk carries the logprobs of its own text; all chunks together equal the whole answer', async () => {
    const body = { model: 'huozi', messages, temperature: 0, max_tokens: 24, logprobs: true, top_logprobs: 2, stream_interval_ms: 0 };
    const whole = await served.post(body);
    const stream = await served.client.chat.completions.create({ ...body, stream: true } as OpenAI.ChatCompletionCreateParamsStreaming);
    const streamed: OpenAI.ChatCompletionTokenLogprob[] = [];
    let text = '';
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      if (!choice) continue;
      const entries = choice.logprobs?.content ?? [];
      streamed.push(...entries);
      text += choice.delta.content ?? '';
      if (entries.length > 0) expect(Buffer.from(entries.flatMap((t) => t.bytes!)).toString('utf8').length).toBeGreaterThan(0);
    }
    expect(text).toBe(whole.json.choices[0].message.content);
    expect(streamed.map((t) => t.token)).toEqual(whole.json.choices[0].logprobs.content.map((t: { token: string }) => t.token));
    streamed.forEach((t, i) => expect(t.logprob).toBeCloseTo(whole.json.choices[0].logprobs.content[i].logprob, 5));
  });

  it('logprobs false or absent: logprobs null; top_logprobs without logprobs or above 20: 400', async () => {
    const r = await served.post({ model: 'huozi', messages, max_tokens: 2 });
    expect(r.json.choices[0].logprobs).toBeNull();
    const without = await served.post({ model: 'huozi', messages, max_tokens: 2, top_logprobs: 2 });
    expect(without.status).toBe(400);
    expect(without.json.error.param).toBe('top_logprobs');
    const many = await served.post({ model: 'huozi', messages, max_tokens: 2, logprobs: true, top_logprobs: 21 });
    expect(many.status).toBe(400);
    expect(many.json.error.param).toBe('top_logprobs');
  });
});

describe('completions logprobs (the legacy shape)', () => {
  it('tokens, token_logprobs, top_logprobs (the k most likely and the sampled token) and text_offset', async () => {
    const completion = await served.client.completions.create({ model: 'huozi', prompt: '床前明月光，', temperature: 1.3, seed: 4, max_tokens: 12, logprobs: 2 });
    const choice = completion.choices[0];
    const lp = choice.logprobs!;
    expect(lp.token_logprobs).toHaveLength(lp.tokens!.length);
    lp.tokens!.forEach((token, i) => {
      // A token that ends inside a character is U+FFFD in `tokens`; the others are where text_offset says.
      if (!token.includes('\ufffd')) expect(choice.text.slice(lp.text_offset![i], lp.text_offset![i] + token.length)).toBe(token);
      if (i > 0) expect(lp.text_offset![i]).toBeGreaterThanOrEqual(lp.text_offset![i - 1]);
      const top = lp.top_logprobs![i];
      expect(top[token]).toBeCloseTo(lp.token_logprobs![i], 6);
      expect(Object.keys(top).length).toBeLessThanOrEqual(3);
    });
    const greedy = (await served.client.completions.create({ model: 'huozi', prompt: '床前明月光，', temperature: 0, max_tokens: 8, logprobs: 2 })).choices[0];
    // Control tokens are listed by their text but render nothing.
    expect(greedy.logprobs!.tokens!.filter((t) => !served.model.specialTokens.has(t)).join('')).toBe(greedy.text);
    expect(greedy.logprobs!.top_logprobs!.every((top) => Object.keys(top).length === 2)).toBe(true);
  });

  it('streamed: the chunks continue one logprobs object (offsets go on from chunk to chunk)', async () => {
    const body = { model: 'huozi', prompt: '床前明月光，', temperature: 0, max_tokens: 12, logprobs: 1, stream_interval_ms: 0 };
    const whole = (await served.post(body, '/v1/completions')).json.choices[0].logprobs;
    const chunks = await served.events(body, '/v1/completions');
    const tokens: string[] = [];
    const offsets: number[] = [];
    for (const c of chunks) {
      const lp = c.choices[0]?.logprobs;
      if (!lp) continue;
      tokens.push(...lp.tokens);
      offsets.push(...lp.text_offset);
    }
    expect(tokens).toEqual(whole.tokens);
    expect(offsets).toEqual(whole.text_offset);
  });

  it('logprobs above 5, or with echo: 400 naming logprobs', async () => {
    for (const extra of [{ logprobs: 6 }, { logprobs: 1, echo: true }]) {
      const r = await served.post({ model: 'huozi', prompt: '春', max_tokens: 2, ...extra }, '/v1/completions');
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe('logprobs');
    }
  });
});

describe('logit_bias', () => {
  // The token whose text is `text` alone (the tokenizer may put a space prefix token first).
  const tokenOf = (text: string) => served.model.tokenize(text, { addBos: false }).find((id) => served.model.detokenize([id]) === text)!;

  it('-100 bans the token greedy decoding would pick; +100 makes it the only one', async () => {
    const prompt = served.model.tokenize('床前明月光，');
    const base = { model: 'huozi', prompt: Array.from(prompt), temperature: 0, max_tokens: 3 };
    const first = (await served.server.context.generate(prompt, { temperature: 0, maxTokens: 1 }).result).tokens[0];
    const plain = (await served.post(base, '/v1/completions')).json.choices[0].text as string;
    expect(plain.startsWith(served.model.detokenize([first]))).toBe(true);
    const banned = (await served.post({ ...base, logit_bias: { [first]: -100 } }, '/v1/completions')).json.choices[0].text as string;
    expect(banned.startsWith(served.model.detokenize([first]))).toBe(false);
    const only = (await served.post({ ...base, logit_bias: { [tokenOf('月')]: 100 } }, '/v1/completions')).json.choices[0];
    expect(only.text).toBe('月月月');
  });

  it('through the openai client on chat', async () => {
    const completion = await served.client.chat.completions.create({ model: 'huozi', messages, temperature: 0, max_tokens: 2, logit_bias: { [tokenOf('月')]: 100 } });
    expect(completion.choices[0].message.content).toBe('月月');
  });

  it.each([
    ['a key that is no token id', { x: 1 }],
    ['a bias above 100', { 5: 101 }],
    ['a token outside the vocabulary', { 10000000: 1 }],
    ['not an object', [1, 2]],
  ])('%s: 400 naming logit_bias', async (_, bias) => {
    const r = await served.post({ model: 'huozi', messages, max_tokens: 2, logit_bias: bias });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toMatch(/^logit_bias/);
  });
});

describe('n and seed', () => {
  // A question without one right answer, so that different seeds can differ.
  const open = [{ role: 'user' as const, content: '随便写一句诗' }];

  it('n = 3 with a seed: indexes 0..2, each choice as the single request seeded seed+i, usage summed', async () => {
    const body = { model: 'huozi', messages: open, temperature: 2, max_tokens: 10 };
    const three = await served.client.chat.completions.create({ ...body, n: 3, seed: 40 });
    expect(three.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (let i = 0; i < 3; i++) {
      const single = await served.client.chat.completions.create({ ...body, seed: 40 + i });
      expect(three.choices[i].message.content).toBe(single.choices[0].message.content);
    }
    const again = await served.client.chat.completions.create({ ...body, n: 3, seed: 40 });
    expect(again.choices.map((c) => c.message.content)).toEqual(three.choices.map((c) => c.message.content));
    expect(new Set(three.choices.map((c) => c.message.content)).size).toBeGreaterThan(1);
    const single = await served.client.chat.completions.create({ ...body, seed: 40 });
    expect(three.usage!.prompt_tokens).toBe(single.usage!.prompt_tokens);
    expect(three.usage!.completion_tokens).toBe(30);
  });

  it('n = 4 evaluates the prompt once: the other choices copy its cache (huozi_prompt_tokens_shared_total)', async () => {
    const counter = async (name: string) => Number(new RegExp(`^${name} (\\d+)`, 'm').exec(await (await fetch(`${served.url}/metrics`)).text())?.[1]);
    const before = { evaluated: await counter('huozi_prompt_tokens_total'), shared: await counter('huozi_prompt_tokens_shared_total') };
    // A prompt no slot holds yet.
    const r = await served.client.chat.completions.create({
      model: 'huozi', messages: [{ role: 'user', content: `请背诵第${Date.now()}首诗` }], temperature: 1.5, max_tokens: 6, n: 4,
    });
    expect(r.choices).toHaveLength(4);
    const prompt = r.usage!.prompt_tokens;
    expect(await counter('huozi_prompt_tokens_shared_total') - before.shared).toBe(3 * prompt);
    expect(await counter('huozi_prompt_tokens_total') - before.evaluated).toBeLessThanOrEqual(prompt);
  });

  it('n = 2 streamed: chunks of both indexes, each choice ends with its finish_reason, the same texts as unstreamed', async () => {
    const body = { model: 'huozi', messages: open, temperature: 2, max_tokens: 10, n: 2, seed: 9 };
    const whole = await served.client.chat.completions.create(body);
    const stream = await served.client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
    const texts = ['', ''];
    const finish: (string | null)[] = [null, null];
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        texts[c.index] += c.delta.content ?? '';
        if (c.finish_reason) finish[c.index] = c.finish_reason;
      }
    }
    expect(texts).toEqual(whole.choices.map((c) => c.message.content));
    expect(finish).toEqual(['length', 'length']);
    expect(usage?.completion_tokens).toBe(20);
  });

  it('n on completions, and n beyond what the server holds: 400', async () => {
    const r = await served.post({ model: 'huozi', prompt: '春眠', max_tokens: 3, n: 2, seed: 1 }, '/v1/completions');
    expect(r.json.choices.map((c: { index: number }) => c.index)).toEqual([0, 1]);
    const tooMany = await served.post({ model: 'huozi', prompt: '春眠', max_tokens: 3, n: 128 }, '/v1/completions');
    expect(tooMany.status).toBe(400);
    expect(tooMany.json.error.param).toBe('n');
    expect((await served.post({ model: 'huozi', prompt: '春眠', n: 0 }, '/v1/completions')).json.error.param).toBe('n');
  });

  it('best_of equal to n is accepted; other values 400', async () => {
    expect((await served.post({ model: 'huozi', prompt: '春眠', max_tokens: 2, n: 2, best_of: 2 }, '/v1/completions')).status).toBe(200);
    const r = await served.post({ model: 'huozi', prompt: '春眠', max_tokens: 2, best_of: 3 }, '/v1/completions');
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('best_of');
  });

  it('the same seed at temperature 2 gives the same answer; another seed another one', async () => {
    const body = { model: 'huozi', messages: open, temperature: 2, max_tokens: 16 };
    const a = await served.client.chat.completions.create({ ...body, seed: 123 });
    const b = await served.client.chat.completions.create({ ...body, seed: 123 });
    const others = await Promise.all([124, 125, 126].map((seed) => served.client.chat.completions.create({ ...body, seed })));
    expect(b.choices[0].message.content).toBe(a.choices[0].message.content);
    expect(others.some((o) => o.choices[0].message.content !== a.choices[0].message.content)).toBe(true);
  });
});

describe('fields that did nothing before: they act, are metadata, or get 400', () => {
  it.each([
    ['verbosity', 'high'],
    ['web_search_options', {}],
    ['moderation', { input: {} }],
  ])('%s: 400 naming it', async (field, value) => {
    const r = await served.post({ model: 'huozi', messages, max_tokens: 2, [field]: value });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe(field);
  });

  it('metadata fields are accepted and change nothing', async () => {
    const body = { model: 'huozi', messages, temperature: 0, max_tokens: 8 };
    const plain = await served.post(body);
    const tagged = await served.post({
      ...body, user: 'u', store: false, metadata: { a: 'b' }, service_tier: 'auto', safety_identifier: 's', prompt_cache_key: 'k',
      prompt_cache_retention: '24h', prompt_cache_options: { ttl: '30m' }, verbosity: 'medium',
    });
    expect(tagged.status).toBe(200);
    expect(tagged.json.choices[0].message.content).toBe(plain.json.choices[0].message.content);
  });
});
