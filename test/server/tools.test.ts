// Tool calls on the server's /v1/chat/completions (issue #16), through the official `openai` client, whole and
// streamed. The fixture model recites poems: what makes its calls valid is the grammar built from the tools'
// parameters, so every call's arguments are checked with a real JSON Schema validator (ajv). Seeds make each
// case repeatable; max_tokens leaves room for the converter's whitespace (up to 20 tabs, each a token).
import Ajv from 'ajv';
import type { ChatCompletion, ChatCompletionMessageParam, ChatCompletionTool } from 'openai/resources/chat/completions';
import { describe, expect, it } from 'vitest';
import { EOU } from '../helpers.js';
import { serveTinyModel } from './serve.js';

const served = serveTinyModel({ parallel: 4, contextSize: 8192 });

const WEATHER = {
  type: 'object',
  properties: { city: { type: 'string', enum: ['北京', '上海', '广州'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
  required: ['city'],
} as const;
const ADD = {
  type: 'object',
  properties: { a: { type: 'integer', minimum: 0, maximum: 100 }, b: { type: 'integer', minimum: 0, maximum: 100 } },
  required: ['a', 'b'],
} as const;
const tools: ChatCompletionTool[] = [
  { type: 'function', function: { name: 'get_weather', description: '查询城市天气', parameters: WEATHER } },
  { type: 'function', function: { name: 'add', description: 'Add two integers', parameters: ADD, strict: true } },
];
const messages: ChatCompletionMessageParam[] = [
  { role: 'system', content: '你是一个智能助手' },
  { role: 'user', content: '北京天气怎么样？' },
];
// cache_prompt false (llama-server's field): every request evaluates its whole prompt, so that a seed gives the
// same answer whatever ran before it in the slot (streamed and whole answers are compared).
const base = { model: 'huozi', messages, tools, temperature: 1, max_tokens: 1200, ...({ cache_prompt: false } as object) };

const ajv = new Ajv({ strict: false });
const validators: Record<string, ReturnType<typeof ajv.compile>> = { get_weather: ajv.compile(WEATHER), add: ajv.compile(ADD) };

/** A choice that called tools: OpenAI's shape, ids call_<hex> all different, arguments valid for the tool. */
function expectCalls(choice: ChatCompletion.Choice, names: readonly string[]): void {
  expect(choice.finish_reason, JSON.stringify(choice.message)).toBe('tool_calls');
  expect(choice.message.content).toBeNull();
  const calls = choice.message.tool_calls!;
  expect(calls.length).toBeGreaterThan(0);
  expect(new Set(calls.map((c) => c.id)).size).toBe(calls.length);
  for (const call of calls) {
    expect(call.id).toMatch(/^call_[0-9a-f]{24}$/);
    expect(call.type).toBe('function');
    if (call.type !== 'function') continue;
    expect(names).toContain(call.function.name);
    const validate = validators[call.function.name];
    const args = JSON.parse(call.function.arguments) as unknown;
    expect(validate(args), `${call.function.arguments}: ${ajv.errorsText(validate.errors)}`).toBe(true);
  }
}

describe('tool calls through the openai client', () => {
  it("tool_choice 'required': calls of the tools with valid arguments, whole and streamed", async () => {
    for (let seed = 0; seed < 4; seed++) {
      const r = await served.client.chat.completions.create({ ...base, tool_choice: 'required', seed });
      expectCalls(r.choices[0], ['get_weather', 'add']);
      // The client accumulates the streamed deltas into the same calls (their ids are new ones).
      const stream = served.client.chat.completions.stream({ ...base, tool_choice: 'required', seed });
      const streamed = (await stream.finalChatCompletion()).choices[0];
      expectCalls(streamed, ['get_weather', 'add']);
      const strip = (c: ChatCompletion.Choice) => c.message.tool_calls!.map((t) => (t.type === 'function' ? [t.function.name, t.function.arguments] : t));
      expect(strip(streamed)).toEqual(strip(r.choices[0]));
    }
  }, 300_000);

  it('a named tool: only that tool is called; with n = 3 each choice is its own turn', async () => {
    const named = { type: 'function', function: { name: 'add' } } as const;
    for (let seed = 0; seed < 3; seed++) {
      const r = await served.client.chat.completions.create({ ...base, tool_choice: named, seed });
      expectCalls(r.choices[0], ['add']);
    }
    const r = await served.client.chat.completions.create({ ...base, tool_choice: named, seed: 2, n: 3 });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    for (const choice of r.choices) expectCalls(choice, ['add']);
    const ids = r.choices.flatMap((c) => c.message.tool_calls!.map((t) => t.id));
    expect(new Set(ids).size).toBe(ids.length);
    // Streamed, the choices come apart by index, each with its own calls.
    const stream = served.client.chat.completions.stream({ ...base, tool_choice: named, seed: 2, n: 3 });
    const final = await stream.finalChatCompletion();
    expect(final.choices).toHaveLength(3);
    for (const choice of final.choices) expectCalls(choice, ['add']);
  }, 300_000);

  it('parallel_tool_calls false: one call per turn', async () => {
    let several = false;
    // Which seeds make several calls depends on the CPU kernels (the numbers' last bits): up to 16 are tried.
    for (let seed = 0; seed < 16 && (seed < 4 || !several); seed++) {
      const free = await served.client.chat.completions.create({ ...base, tool_choice: 'required', seed });
      several ||= free.choices[0].message.tool_calls!.length > 1;
      const r = await served.client.chat.completions.create({ ...base, tool_choice: 'required', parallel_tool_calls: false, seed });
      expectCalls(r.choices[0], ['get_weather', 'add']);
      expect(r.choices[0].message.tool_calls).toHaveLength(1);
    }
    // Without the limit one of those seeds makes several calls in a turn.
    expect(several).toBe(true);
  }, 300_000);

  it("tool_choice 'auto' (the default with tools): calls with valid arguments, or an answer as plain text", async () => {
    const seen = new Set<string>();
    for (let seed = 0; seed < 6; seed++) {
      const r = await served.client.chat.completions.create({ ...base, seed });
      const choice = r.choices[0];
      seen.add(choice.finish_reason);
      if (choice.finish_reason === 'tool_calls') expectCalls(choice, ['get_weather', 'add']);
      else {
        expect(choice.finish_reason).toBe('stop');
        expect(typeof choice.message.content).toBe('string');
        expect(choice.message.tool_calls).toBeUndefined();
        // The answer is the model's response, not the JSON it was said in.
        expect(choice.message.content).not.toMatch(/^\s*\{\s*"response"/);
      }
    }
    expect(seen.has('tool_calls')).toBe(true);
  }, 300_000);

  it("tool_choice 'none': no tools offered, the same plain answer as without tools", async () => {
    const poem = {
      model: 'huozi', messages: [{ role: 'user' as const, content: '请背诵《春晓》' }], temperature: 0, max_tokens: 24,
      ...({ cache_prompt: false } as object),
    };
    const plain = await served.client.chat.completions.create(poem);
    const none = await served.client.chat.completions.create({ ...poem, tools, tool_choice: 'none' });
    expect(none.choices[0].message.content).toBe(plain.choices[0].message.content);
    expect(none.choices[0].message.tool_calls).toBeUndefined();
    expect(none.usage!.prompt_tokens).toBe(plain.usage!.prompt_tokens);
    // Streamed as text as it comes.
    const stream = await served.client.chat.completions.create({ ...poem, tools, tool_choice: 'none', stream: true, ...({ stream_interval_ms: 0 } as object) });
    let text = '';
    let chunks = 0;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      if (chunk.choices[0]?.delta.content) chunks++;
    }
    expect(text).toBe(plain.choices[0].message.content);
    expect(chunks).toBeGreaterThan(1);
  }, 120_000);

  it('a two-round conversation: the calls and the tool results go back, and the model answers', async () => {
    const first = await served.client.chat.completions.create({ ...base, tool_choice: { type: 'function', function: { name: 'get_weather' } }, seed: 0 });
    expectCalls(first.choices[0], ['get_weather']);
    const called = first.choices[0].message;
    // The assistant message goes back as the client returned it (content null), then one result per call.
    const history: ChatCompletionMessageParam[] = [
      ...messages,
      called,
      ...called.tool_calls!.map((c) => ({ role: 'tool' as const, tool_call_id: c.id, content: '{"sky":"晴","temperature":21}' })),
    ];
    // The call ids in the history are random, so which seeds answer rather than call again varies from run to run
    // (12 seeds once all called again): up to 32.
    let answer: ChatCompletion.Choice | undefined;
    for (let seed = 0; seed < 32 && answer === undefined; seed++) {
      const r = await served.client.chat.completions.create({ ...base, messages: history, seed });
      expect(r.usage!.prompt_tokens).toBeGreaterThan(first.usage!.prompt_tokens);
      if (r.choices[0].finish_reason === 'tool_calls') expectCalls(r.choices[0], ['get_weather', 'add']);
      else answer = r.choices[0];
    }
    expect(answer?.finish_reason).toBe('stop');
    expect(typeof answer?.message.content).toBe('string');
    // Streamed the same.
    const stream = served.client.chat.completions.stream({ ...base, messages: history, seed: 1 });
    const final = (await stream.finalChatCompletion()).choices[0];
    expect(['stop', 'tool_calls']).toContain(final.finish_reason);
    if (final.finish_reason === 'tool_calls') expectCalls(final, ['get_weather', 'add']);
    // A new call never reuses an id of the conversation.
    const again = await served.client.chat.completions.create({ ...base, messages: history, tool_choice: 'required', seed: 0 });
    for (const call of again.choices[0].message.tool_calls!) expect(called.tool_calls!.map((c) => c.id)).not.toContain(call.id);
  }, 300_000);
});

describe('the tool turn on the wire', () => {
  it('streams the calls as deltas: the role first, then per call its id, type and name, then its arguments, then the finish', async () => {
    const list = await served.events({ ...base, tool_choice: 'required', seed: 1 });
    const deltas = list.filter((e) => e.choices.length > 0).map((e) => e.choices[0]);
    expect(deltas[0].delta).toEqual({ role: 'assistant' });
    // No JSON text goes out as content.
    expect(deltas.some((d) => typeof d.delta.content === 'string' && d.delta.content !== '')).toBe(false);
    const calls = deltas.filter((d) => d.delta.tool_calls);
    expect(calls.length % 2).toBe(0);
    for (let i = 0; i < calls.length; i += 2) {
      const [head, args] = [calls[i].delta.tool_calls[0], calls[i + 1].delta.tool_calls[0]];
      expect(head).toMatchObject({ index: i / 2, type: 'function', function: { arguments: '' } });
      expect(head.id).toMatch(/^call_[0-9a-f]{24}$/);
      expect(args.index).toBe(i / 2);
      expect(validators[head.function.name](JSON.parse(args.function.arguments))).toBe(true);
    }
    expect(deltas.at(-1)).toMatchObject({ delta: {}, finish_reason: 'tool_calls' });
  }, 120_000);

  it("logprobs with tools are the raw turn's tokens (its JSON text), whole and streamed", async () => {
    const r = await served.post({ ...base, tool_choice: 'required', seed: 0, logprobs: true, top_logprobs: 2 });
    expect(r.status).toBe(200);
    const entries = r.json.choices[0].logprobs.content as { token: string; bytes: number[]; top_logprobs: unknown[] }[];
    const raw = Buffer.from(entries.flatMap((e) => e.bytes)).toString('utf8');
    const parsed = JSON.parse(raw) as { tool_calls: { name: string; arguments: unknown }[] };
    expect(parsed.tool_calls.map((c) => c.name)).toEqual(r.json.choices[0].message.tool_calls.map((c: any) => c.function.name));
    expect(parsed.tool_calls.map((c) => JSON.stringify(c.arguments))).toEqual(r.json.choices[0].message.tool_calls.map((c: any) => c.function.arguments));
    expect(entries.every((e) => e.top_logprobs.length === 2)).toBe(true);
    const list = await served.events({ ...base, tool_choice: 'required', seed: 0, logprobs: true, top_logprobs: 2 });
    const streamed = list.flatMap((e) => e.choices[0]?.logprobs?.content ?? []) as { token: string; logprob: number }[];
    expect(streamed.map((e) => e.token)).toEqual(entries.map((e) => e.token));
    streamed.forEach((e, i) => expect(e.logprob).toBeCloseTo((entries[i] as unknown as { logprob: number }).logprob, 4));
  }, 120_000);

  it('a turn cut by max_tokens is sent as the JSON text it got to, finish_reason length', async () => {
    const r = await served.client.chat.completions.create({ ...base, tool_choice: 'required', seed: 0, max_tokens: 5 });
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.choices[0].message.tool_calls).toBeUndefined();
    expect(r.choices[0].message.content!.trimStart().startsWith('{')).toBe(true);
    const list = await served.events({ ...base, tool_choice: 'required', seed: 0, max_tokens: 5 });
    const text = list.map((e) => e.choices[0]?.delta.content ?? '').join('');
    expect(text).toBe(r.choices[0].message.content);
    expect(list.at(-1)!.choices[0].finish_reason).toBe('length');
  }, 60_000);
});

describe('the end of the turn inside a constrained answer', () => {
  it('is banned, so the answer ends where its grammar does; a logit_bias naming it lets it end the turn inside a JSON string', async () => {
    const say = [{ type: 'function', function: { name: 'say', parameters: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] } } }];
    const ask = { model: 'huozi', messages: [{ role: 'user', content: '说点什么' }], seed: 0, temperature: 1, max_tokens: 600, cache_prompt: false };
    const banned = await served.post({ ...ask, tools: say, tool_choice: 'required' });
    expect(banned.json.choices[0].finish_reason).toBe('tool_calls');
    const named = await served.post({ ...ask, tools: say, tool_choice: 'required', logit_bias: { [EOU]: 100 } });
    expect(named.json.choices[0].finish_reason).toBe('stop');
    expect(named.json.choices[0].message.content).toMatch(/"text"\s*:\s*"$/);
    // The same for a structured-output field.
    const schema = { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] };
    const whole = await served.post({ ...ask, guided_json: schema });
    expect(new Ajv().validate(schema, JSON.parse(whole.json.choices[0].message.content))).toBe(true);
    const cut = await served.post({ ...ask, guided_json: schema, logit_bias: { [EOU]: 100 } });
    expect(cut.json.choices[0].message.content).toMatch(/"text"\s*:\s*"$/);
  }, 60_000);
});

describe('bad tools and messages: 400 naming the field', () => {
  const ask = { model: 'huozi', messages: [{ role: 'user', content: 'x' }], max_tokens: 4 };
  const fn = (f: Record<string, unknown>) => [{ type: 'function', function: { name: 'f', ...f } }];
  it.each([
    ['tools not an array', { tools: { type: 'function' } }, 'tools'],
    ['a tool not an object', { tools: ['f'] }, 'tools[0]'],
    ['an unknown tool type', { tools: [{ type: 'custom', custom: { name: 'f' } }] }, 'tools[0].type'],
    ['an unknown tool_choice type', { tools: fn({}), tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'auto', tools: [] } } }, 'tool_choice.type'],
    ['an unknown key in a tool', { tools: [{ type: 'function', function: { name: 'f' }, strict: true }] }, 'tools[0].strict'],
    ['no function', { tools: [{ type: 'function' }] }, 'tools[0].function'],
    ['a name starting with a digit', { tools: fn({ name: '1f' }) }, 'tools[0].function.name'],
    ['a name with a space', { tools: fn({ name: 'get weather' }) }, 'tools[0].function.name'],
    ['two tools of one name', { tools: [...fn({}), ...fn({})] }, 'tools[1].function.name'],
    ['an unknown key in a function', { tools: fn({ params: {} }) }, 'tools[0].function.params'],
    ['a description not a string', { tools: fn({ description: 3 }) }, 'tools[0].function.description'],
    ['parameters not an object', { tools: fn({ parameters: 'city' }) }, 'tools[0].function.parameters'],
    ['parameters not of type object', { tools: fn({ parameters: { type: 'string' } }) }, 'tools[0].function.parameters.type'],
    ['strict not a boolean', { tools: fn({ strict: 'yes' }) }, 'tools[0].function.strict'],
    ['parameters the converter cannot honour', { tools: [...fn({}), { type: 'function', function: { name: 'g', parameters: { type: 'object', properties: { n: { type: 'integer', multipleOf: 3 } } } } }] }, 'tools[1].function.parameters'],
    ['tool_choice of an unknown value', { tools: fn({}), tool_choice: 'any' }, 'tool_choice'],
    ['tool_choice naming no tool', { tools: fn({}), tool_choice: { type: 'function', function: { name: 'g' } } }, 'tool_choice.function.name'],
    ["tool_choice 'required' without tools", { tool_choice: 'required' }, 'tool_choice'],
    ['parallel_tool_calls not a boolean', { tools: fn({}), parallel_tool_calls: 'yes' }, 'parallel_tool_calls'],
    ['legacy functions', { functions: [{ name: 'f', parameters: {} }] }, 'functions'],
    ['legacy function_call', { function_call: { name: 'f' } }, 'function_call'],
  ])('%s', async (_, extra, param) => {
    const r = await served.post({ ...ask, ...extra });
    expect(r.status, JSON.stringify(r.json)).toBe(400);
    expect(r.json.error.param).toBe(param);
    expect(r.json.error.message).toContain(param);
  });

  const call = (id: string, args = '{"city":"北京"}') => ({ id, type: 'function', function: { name: 'get_weather', arguments: args } });
  const convo = (...rest: Record<string, unknown>[]) => ({ ...ask, messages: [{ role: 'user', content: '北京天气' }, ...rest] });
  it.each([
    ['a result for no call', convo({ role: 'tool', tool_call_id: 'call_x', content: '晴' }), 'messages[1].tool_call_id'],
    ['a call answered twice', convo(
      { role: 'assistant', content: null, tool_calls: [call('c1')] },
      { role: 'tool', tool_call_id: 'c1', content: '晴' },
      { role: 'tool', tool_call_id: 'c1', content: '雨' },
    ), 'messages[3].tool_call_id'],
    ['two calls of one id', convo({ role: 'assistant', content: null, tool_calls: [call('c1'), call('c1')] }), 'messages[1].tool_calls[1].id'],
    ["a result naming another tool", convo(
      { role: 'assistant', content: null, tool_calls: [call('c1')] },
      { role: 'tool', tool_call_id: 'c1', name: 'add', content: '晴' },
    ), 'messages[2].name'],
    ['arguments that are not JSON', convo({ role: 'assistant', content: null, tool_calls: [call('c1', '{city: 北京}')] }), 'messages[1].tool_calls[0].function.arguments'],
    ['arguments that are not an object', convo({ role: 'assistant', content: null, tool_calls: [call('c1', '[1]')] }), 'messages[1].tool_calls[0].function.arguments'],
    ['a call without an id', convo({ role: 'assistant', content: null, tool_calls: [{ type: 'function', function: { name: 'f', arguments: '{}' } }] }), 'messages[1].tool_calls[0].id'],
    ['a tool message without tool_call_id', convo({ role: 'tool', content: '晴' }), 'messages[1].tool_call_id'],
    ['tool_calls on a user message', convo({ role: 'user', content: 'x', tool_calls: [call('c1')] }), 'messages[1].tool_calls'],
    ['tool_call_id on a user message', convo({ role: 'user', content: 'x', tool_call_id: 'c1' }), 'messages[1].tool_call_id'],
    ['a legacy function message', convo({ role: 'function', name: 'f', content: '晴' }), 'messages[1].role'],
  ])('%s', async (_, body, param) => {
    const r = await served.post(body);
    expect(r.status, JSON.stringify(r.json)).toBe(400);
    expect(r.json.error.param).toBe(param);
    expect(r.json.error.message).toContain(param);
  });

  it('tools with a structured-output field: 400 naming both', async () => {
    for (const extra of [
      { response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' } } } },
      { guided_json: { type: 'object' } },
    ]) {
      const field = Object.keys(extra)[0];
      const r = await served.post({ ...ask, tools: fn({}), ...extra });
      expect(r.status).toBe(400);
      expect(r.json.error.message).toContain(`'tools' and '${field}'`);
    }
    // With tool_choice 'none' no tools are offered: the format applies alone.
    const none = await served.post({ ...ask, max_tokens: 3, tools: fn({}), tool_choice: 'none', guided_choice: ['a'] });
    expect(none.json.choices[0].message.content).toBe('a');
  });

  it('through the client: the 400 rejects with the field', async () => {
    await expect(served.client.chat.completions.create({
      model: 'huozi', messages: [{ role: 'user', content: 'x' }],
      tools: [{ type: 'function', function: { name: 'bad name' } }],
    })).rejects.toMatchObject({ status: 400, param: 'tools[0].function.name' });
  });
});
