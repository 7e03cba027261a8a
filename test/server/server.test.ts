// The OpenAI-compatible server on the tiny Huozi model, driven by the official `openai` npm client and by
// plain fetch for what a client library would not send.
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { createServer } from '../../dist/index.js';
import { EOU } from '../helpers.js';
import { serveTinyModel } from './serve.js';

const POEMS = ['春晓', '静夜思', '登鹳雀楼', '相思', '江雪', '寻隐者不遇', '九月九日忆山东兄弟', '早发白帝城'];

const served = serveTinyModel({ parallel: 4, contextSize: 4096, responseRole: '助手' });

// Huozi's README sends these with every request.
const huoziExtras = { stop: ['<|endofutterance|>'], stop_token_ids: [EOU], repetition_penalty: 1.0 };

function ask(poem: string) {
  return { model: 'huozi', messages: [{ role: 'user' as const, content: `请背诵《${poem}》` }], temperature: 0, max_tokens: 128 };
}

async function metric(name: string, base = served.url): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return Number(line?.split(' ')[1]);
}

describe('the openai client', () => {
  it('lists the served model', async () => {
    const models = await served.client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['huozi']);
  });

  it('chat: non-streaming, with Huozi README request shape, answers in the configured role', async () => {
    const completion = await served.client.chat.completions.create({ ...ask('春晓'), ...huoziExtras } as never);
    const choice = (completion as OpenAI.ChatCompletion).choices[0];
    expect(choice.message.role).toBe('助手');
    expect(choice.message.content).toContain('春眠不觉晓，处处闻啼鸟。');
    expect(choice.finish_reason).toBe('stop');
    const usage = (completion as OpenAI.ChatCompletion).usage!;
    expect(usage.prompt_tokens).toBeGreaterThan(5);
    expect(usage.completion_tokens).toBeGreaterThan(10);
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
  });

  it('chat: streaming gives the same text as non-streaming, then usage and [DONE]', async () => {
    const whole = await served.client.chat.completions.create(ask('静夜思'));
    const stream = await served.client.chat.completions.create({ ...ask('静夜思'), stream: true, stream_options: { include_usage: true } });
    let text = '';
    let chunks = 0;
    let finish: string | null = null;
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const chunk of stream) {
      if (chunk.usage) usage = chunk.usage;
      const choice = chunk.choices[0];
      if (!choice) continue;
      if (choice.delta.content) {
        text += choice.delta.content;
        chunks++;
      }
      if (choice.finish_reason) finish = choice.finish_reason;
    }
    expect(text).toBe(whole.choices[0].message.content);
    expect(chunks).toBeGreaterThanOrEqual(1);
    expect(finish).toBe('stop');
    expect(usage?.completion_tokens).toBe(whole.usage?.completion_tokens);
  });

  it('streaming delivers text while it is generated, not all at the end', async () => {
    // A poem is ~30 tokens, ~10 ms on a fast machine: one delivery (text is coalesced for up to 16 ms) is then
    // right. 1500 tokens that cannot stop early take hundreds of ms, which must arrive in many pieces.
    const stream = await served.client.completions.create({
      model: 'huozi', prompt: '春', max_tokens: 1500, temperature: 0, stream: true, ignore_eos: true,
    } as never) as unknown as AsyncIterable<OpenAI.Completion>;
    const arrivals: number[] = [];
    let text = '';
    for await (const chunk of stream) {
      if (chunk.choices[0]?.text) {
        text += chunk.choices[0].text;
        arrivals.push(performance.now());
      }
    }
    expect(text.length).toBeGreaterThan(500);
    expect(arrivals.length).toBeGreaterThan(3);
    // The first text came well before the last: the stream was not held back until the end.
    expect(arrivals.at(-1)! - arrivals[0]).toBeGreaterThan(20);
  });

  it('chat: Huozi role names 系统/用户/助手, a multi-turn history, max_tokens gives finish_reason length', async () => {
    const r = await served.client.chat.completions.create({
      model: 'huozi',
      messages: [
        { role: '系统', content: '你是一个智能助手' },
        { role: '用户', content: '请背诵《春晓》' },
        { role: '助手', content: '《春晓》\n孟浩然\n春眠不觉晓，处处闻啼鸟。\n夜来风雨声，花落知多少。' },
        { role: '用户', content: '作者是谁？' },
      ] as never,
      temperature: 0,
      max_tokens: 3,
    });
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.usage?.completion_tokens).toBe(3);
  });

  it('completions: streaming and not, seed makes sampling repeatable', async () => {
    const prompt = '春眠不觉晓，';
    // cache_prompt: false (llama-server's field): the whole prompt is evaluated every time, so the logits are
    // bit-identical; reusing a slot's cached prefix evaluates only the last token, which can differ in the
    // last bits and, at temperature 0.9, pick another token (seen with the AVX2 CPU backend).
    const extra = { cache_prompt: false } as never;
    const a = await served.client.completions.create({ model: 'huozi', prompt, max_tokens: 12, temperature: 0.9, seed: 42, ...(extra as object) });
    const b = await served.client.completions.create({ model: 'huozi', prompt, max_tokens: 12, temperature: 0.9, seed: 42, ...(extra as object) });
    expect(a.choices[0].text).toBe(b.choices[0].text);
    expect(a.object).toBe('text_completion');
    // cache_prompt false: nothing came from the cache, and the server says so (the field is always there).
    expect(a.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    expect(b.usage?.prompt_tokens_details?.cached_tokens).toBe(0);
    const stream = await served.client.completions.create({
      model: 'huozi', prompt, max_tokens: 12, temperature: 0.9, seed: 42, stream: true, ...(extra as object),
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.text ?? '';
    expect(text).toBe(a.choices[0].text);
  });
});

describe('per-token streaming (stream_interval_ms / streamIntervalMs 0)', () => {
  it('sends one SSE event per token, each carrying that token\'s text, as llama-server does; the default coalesces', async () => {
    const n = 128;
    const prompt = '请背诵《春晓》';
    const body = { model: 'huozi', prompt, max_tokens: n, temperature: 0, ignore_eos: true, cache_prompt: false, stream: true };
    // The oracle: the answer's tokens, from the same parallel context with the whole prompt evaluated (as the
    // requests below, with cache_prompt false), and the text each token completes: the detokenized prompt and
    // answer up to it, less that up to the token before (a token that ends inside a character adds none).
    const reference = await served.server.context.generate(prompt, { temperature: 0, maxTokens: n, stopAtEog: false, reuseCache: false }).result;
    expect(reference.tokens).toHaveLength(n);
    expect(reference.text).not.toContain('\uFFFD'); // no invalid bytes, whose text the prefixes could not place
    const ids = Array.from(served.model.tokenizeToArray(prompt));
    const upTo = (i: number) => served.model.detokenize([...ids, ...reference.tokens.slice(0, i)]).replace(/\uFFFD+$/, '');
    const expected: string[] = [];
    for (let i = 1; i <= n; i++) {
      const piece = upTo(i).slice(upTo(i - 1).length);
      if (piece) expected.push(piece);
    }
    expect(expected.join('')).toBe(reference.text);
    expect(expected.length).toBeGreaterThan(n / 2);

    // Reads an SSE response: the text of every event that carries text, and the usage.
    const events = async (base: string, extra: object) => {
      const t0 = performance.now();
      const res = await fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ ...body, ...extra, stream_options: { include_usage: true } }),
      });
      expect(res.status).toBe(200);
      const texts: string[] = [];
      let usage: { completion_tokens: number } | undefined;
      for (const block of (await res.text()).split('\n\n')) {
        const data = block.replace(/^data: /, '');
        if (data === '' || data === '[DONE]') continue;
        const json = JSON.parse(data) as { choices: { text: string }[]; usage?: { completion_tokens: number } };
        if (json.usage) usage = json.usage;
        if (json.choices[0]?.text) texts.push(json.choices[0].text);
      }
      return { texts, usage, ms: performance.now() - t0 };
    };

    // A request's stream_interval_ms 0 on a server with the default interval.
    const perToken = await events(served.url, { stream_interval_ms: 0 });
    expect(perToken.usage?.completion_tokens).toBe(n);
    expect(perToken.texts).toEqual(expected);

    // The server's own setting (--stream-interval-ms 0): the same events without the request field.
    const s = await createServer(served.model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, streamIntervalMs: 0 });
    const { url: u } = await s.listen(0);
    try {
      expect(s.streamIntervalMs).toBe(0);
      expect((await events(u, {})).texts).toEqual(expected);
    } finally {
      await s.close();
    }

    // The default (16 ms): the same text in at most one event per 16 ms of the request, plus the last.
    const coalesced = await events(served.url, {});
    expect(coalesced.texts.join('')).toBe(reference.text);
    expect(coalesced.texts.length).toBeLessThanOrEqual(Math.floor(coalesced.ms / 16) + 2);

    // Checked, never ignored.
    const bad = await fetch(`${served.url}/v1/completions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ ...body, stream_interval_ms: -1 }),
    });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { param: string } }).error.param).toBe('stream_interval_ms');
    await expect(createServer(served.model, { streamIntervalMs: 1.5 })).rejects.toThrow(/streamIntervalMs/);
  });
});

describe('parallel slots', () => {
  it('32 concurrent streaming clients each get their complete, correct answer', async () => {
    // The answers one at a time first (greedy), then all 32 at once.
    const expected = new Map<string, string>();
    for (const poem of POEMS) expected.set(poem, (await served.client.chat.completions.create(ask(poem))).choices[0].message.content!);
    const decodesBefore = await metric('huozi_decode_calls_total');
    const tokensBefore = await metric('huozi_generated_tokens_total');
    const runs = await Promise.all(
      Array.from({ length: 32 }, async (_, i) => {
        const poem = POEMS[i % POEMS.length];
        const c = new OpenAI({ apiKey: 'EMPTY', baseURL: `${served.url}/v1`, maxRetries: 0 });
        const stream = await c.chat.completions.create({ ...ask(poem), stream: true });
        let text = '';
        let finish: string | null = null;
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta.content ?? '';
          finish = chunk.choices[0]?.finish_reason ?? finish;
        }
        return { poem, text, finish };
      }),
    );
    for (const run of runs) {
      expect(run.finish).toBe('stop');
      expect(run.text).toBe(expected.get(run.poem));
    }
    // Served together: fewer decode steps than tokens (4 slots batched per step).
    const decodes = (await metric('huozi_decode_calls_total')) - decodesBefore;
    const tokens = (await metric('huozi_generated_tokens_total')) - tokensBefore;
    expect(decodes).toBeLessThan(tokens / 2.5);
    expect(await metric('huozi_slots_busy')).toBe(0);
  });

  it('a client that disconnects mid-stream frees its slot at once', async () => {
    // A slot of 32768 tokens: the generation cannot reach its end (context full) before the client leaves.
    const s = await createServer(served.model, { servedModelName: 'huozi', parallel: 1, contextSize: 32768, threads: 1 });
    const { url: u } = await s.listen(0);
    try {
      const controller = new AbortController();
      // A plain completion with ignore_eos: no end-of-turn text or token can end it (a chat generation stops at the
      // template's end-of-utterance text, which a fast machine reaches before the client leaves).
      const res = await fetch(`${u}/v1/completions`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: 'huozi', prompt: '请背诵《春晓》', temperature: 1, max_tokens: 1_000_000, ignore_eos: true, stream: true }),
        signal: controller.signal,
      });
      const reader = res.body!.getReader();
      await reader.read();
      await reader.read();
      expect(await metric('huozi_slots_busy', u)).toBe(1);
      controller.abort();
      const deadline = Date.now() + 2000;
      while ((await metric('huozi_slots_busy', u)) !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      expect(await metric('huozi_slots_busy', u)).toBe(0);
      expect(await metric('huozi_generations_cancelled_total', u)).toBe(1);
      expect(await metric('huozi_generations_completed_total', u)).toBe(0);
    } finally {
      await s.close();
    }
  });
});

describe('bad requests', () => {
  const post = (body: unknown, path = '/v1/chat/completions', headers: Record<string, string> = {}) =>
    fetch(`${served.url}${path}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const good = ask('春晓');

  it.each([
    ['malformed JSON', '{"model": "huozi", ', 'invalid_json', null],
    ['a JSON array', '[1, 2]', 'invalid_json', null],
    ['temperature of the wrong type', { ...good, temperature: 'hot' }, 'invalid_value', 'temperature'],
    ['messages not an array', { ...good, messages: 'hi' }, 'invalid_value', 'messages'],
    ['an unknown role', { ...good, messages: [{ role: 'robot', content: 'x' }] }, 'invalid_value', 'messages[0].role'],
    ['negative max_tokens', { ...good, max_tokens: -1 }, 'integer_below_min_value', 'max_tokens'],
    ['n = 0', { ...good, n: 0 }, 'invalid_value', 'n'],
    ['stop_token_ids outside the vocabulary', { ...good, stop_token_ids: [10_000_000] }, 'invalid_value', 'stop_token_ids'],
    ['an unknown parameter', { ...good, temprature: 0.5 }, 'unknown_parameter', 'temprature'],
  ])('%s: 400 with an OpenAI error body', async (_, body, code, param) => {
    const res = await post(body);
    expect(res.status).toBe(400);
    const json = (await res.json()) as { error: { message: string; type: string; code: string; param: string | null } };
    expect(json.error.type).toBe('invalid_request_error');
    expect(json.error.code).toBe(code);
    expect(json.error.param).toBe(param);
    expect(json.error.message.length).toBeGreaterThan(10);
  });

  it('a prompt longer than a slot: 400 with the token counts', async () => {
    const res = await post({ ...good, messages: [{ role: 'user', content: '春'.repeat(1500) }] });
    expect(res.status).toBe(400);
    const { error } = (await res.json()) as { error: { message: string; code: string } };
    expect(error.code).toBe('context_length_exceeded');
    expect(error.message).toMatch(/maximum context length is 1024 tokens\. However, your messages resulted in \d{4} tokens/);
    // The openai client surfaces it as a BadRequestError.
    await expect(served.client.chat.completions.create({ ...good, messages: [{ role: 'user', content: '春'.repeat(1500) }] })).rejects.toMatchObject({
      status: 400,
    });
  });

  it('unknown model 404, wrong method 405, unknown path 404', async () => {
    expect((await post({ ...good, model: 'gpt-4' })).status).toBe(404);
    expect((await fetch(`${served.url}/v1/chat/completions`)).status).toBe(405);
    expect((await fetch(`${served.url}/v2/nothing`)).status).toBe(404);
  });

  it('the server keeps serving after all of that', async () => {
    const r = await served.client.chat.completions.create(ask('春晓'));
    expect(r.choices[0].message.content).toContain('春眠不觉晓');
    const health = (await (await fetch(`${served.url}/health`)).json()) as { status: string; slots_total: number };
    expect(health).toMatchObject({ status: 'ok', slots_total: 4 });
  });
});

describe('api key, queue bound, loopback', () => {
  it('--api-key: 401 without or with a wrong key, 200 with it; the page and /health stay open', async () => {
    const locked = await createServer(served.model, { servedModelName: 'huozi', parallel: 1, contextSize: 512, threads: 1, apiKey: 'sk-test' });
    const { url: u } = await locked.listen(0);
    try {
      expect((await fetch(`${u}/v1/models`)).status).toBe(401);
      expect((await fetch(`${u}/v1/models`, { headers: { Authorization: 'Bearer nope' } })).status).toBe(401);
      expect((await fetch(`${u}/metrics`)).status).toBe(401);
      expect((await fetch(`${u}/health`)).status).toBe(200);
      const wrong = new OpenAI({ apiKey: 'wrong', baseURL: `${u}/v1`, maxRetries: 0 });
      await expect(wrong.models.list()).rejects.toMatchObject({ status: 401 });
      const right = new OpenAI({ apiKey: 'sk-test', baseURL: `${u}/v1`, maxRetries: 0 });
      expect((await right.models.list()).data[0].id).toBe('huozi');
    } finally {
      await locked.close();
    }
  });

  it('a full queue answers 503 with Retry-After; the queued requests still complete', async () => {
    // The first request runs for seconds (3000 tokens that cannot stop early), so the slot and the one queue
    // place are certainly taken when the third arrives, however fast the machine.
    const small = await createServer(served.model, { servedModelName: 'huozi', parallel: 1, maxQueue: 1, contextSize: 4096, threads: 1 });
    const { url: u } = await small.listen(0);
    try {
      const long = (max: number) =>
        fetch(`${u}/v1/completions`, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ model: 'huozi', prompt: '春', max_tokens: max, ignore_eos: true, temperature: 0 }),
        });
      const first = long(3000);
      const second = long(20);
      const deadline = Date.now() + 5000;
      while ((await metric('huozi_requests_waiting', u)) !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      expect(await metric('huozi_slots_busy', u)).toBe(1);
      expect(await metric('huozi_requests_waiting', u)).toBe(1);
      const third = await long(5);
      expect(third.status).toBe(503);
      expect(third.headers.get('retry-after')).toBe('1');
      expect(((await third.json()) as { error: { code: string } }).error.code).toBe('server_busy');
      expect((await first).status).toBe(200);
      expect((await second).status).toBe(200);
    } finally {
      await small.close();
    }
  });

  it('listens on loopback unless told otherwise', async () => {
    const s = await createServer(served.model, { parallel: 1, contextSize: 256, threads: 1 });
    const address = await s.listen(0);
    expect(address.host).toBe('127.0.0.1');
    await s.close();
  });
});
