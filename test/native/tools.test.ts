// Tool calling on ChatSession (issue #16) on the real llama.cpp: the fixture model recites poems, so what makes
// its calls valid is the grammar built from the tools' schemas. Arguments are checked with a real JSON Schema
// validator; seeds make each case repeatable.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Ajv from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChatSession, GrammarError, loadModel, ToolCallError, type ChatTool, type ConversationMessage, type Context, type Model,
  type ToolCall,
} from '../../dist/index.js';
import { demoPath } from '../helpers.js';

let model: Model;
let context: Context;
beforeAll(async () => {
  model = await loadModel(demoPath);
  // Room for two rounds of long JSON turns (the tiny model indents with tabs; see LONG).
  context = await model.createContext({ contextSize: 4096, threads: 2 });
});
afterAll(async () => {
  await model.dispose();
});

const SYSTEM = '你是一个智能助手';
const weather = {
  description: '查询城市天气',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string', enum: ['北京', '上海', '广州'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
    required: ['city'],
  },
} satisfies ChatTool;
const add = {
  description: 'Add two integers',
  parameters: {
    type: 'object',
    properties: { a: { type: 'integer', minimum: 0, maximum: 100 }, b: { type: 'integer', minimum: 0, maximum: 100 } },
    required: ['a', 'b'],
  },
} satisfies ChatTool;
const tools = { get_weather: weather, add };
// Room for the tiny model's indentation (up to 20 tabs per gap in the converter's whitespace rule).
const LONG = { temperature: 1, maxTokens: 1200 };

const ajv = new Ajv({ strict: false });
const validators = { get_weather: ajv.compile(weather.parameters), add: ajv.compile(add.parameters) };
function expectValid(calls: ToolCall[], names: readonly string[]): void {
  expect(calls.length).toBeGreaterThan(0);
  for (const call of calls) {
    expect(names).toContain(call.name);
    const validate = validators[call.name as keyof typeof validators];
    expect(validate(call.arguments), `${JSON.stringify(call)}: ${ajv.errorsText(validate.errors)}`).toBe(true);
  }
}
/**
 * The first seed (of 32) whose outcome satisfies `wanted`. Which seed makes the model do something is a property of
 * the CPU kernels and the build (the numbers differ in the last bits, and a sampled turn follows them), never of
 * this code: the tests look for one instead of naming it, and fail only if none of 32 does.
 */
async function findSeed<T>(run: (seed: number) => Promise<T>, wanted: (outcome: T) => boolean): Promise<{ seed: number; outcome: T }> {
  for (let seed = 0; seed < 32; seed++) {
    const outcome = await run(seed);
    if (wanted(outcome)) return { seed, outcome };
  }
  throw new Error('no seed of 32 gave the outcome this test needs');
}
const SUMS = '请计算 1+2 和 3+4，再算 5+6';

/** Every tool result in a history answers a call made before it (what setHistory checks). */
const consistent = (history: ConversationMessage[]) => new ChatSession(context).setHistory(history);

describe('tool calls', () => {
  it("with toolChoice 'required': calls with valid arguments, returned to the caller when no tool has a handler", async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    for (let seed = 0; seed < 6; seed++) {
      chat.reset();
      const answer = await chat.prompt('北京天气怎么样？', { tools, toolChoice: 'required', seed, ...LONG });
      expect(answer.text).toBe('');
      expectValid(answer.toolCalls!, ['get_weather', 'add']);
      expect(answer.toolCalls!.map((c) => c.id)).toEqual(answer.toolCalls!.map((_, i) => `call_${i + 1}`));
      // The calls are in the history, waiting for their results.
      expect(chat.history.at(-1)).toEqual({ role: 'assistant', content: '', toolCalls: answer.toolCalls });
    }
  }, 300_000);

  it('with a named tool: only that tool, valid arguments; several calls in a turn unless parallelToolCalls is false', async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    // Every seed tried calls only add, validly; some seed calls it more than once in one turn.
    const { seed } = await findSeed(async (seed) => {
      chat.reset();
      const answer = await chat.prompt(SUMS, { tools, toolChoice: { name: 'add' }, seed, ...LONG });
      expectValid(answer.toolCalls!, ['add']);
      expect(new Set(answer.toolCalls!.map((c) => c.id)).size).toBe(answer.toolCalls!.length);
      return answer.toolCalls!.length;
    }, (calls) => calls > 1);
    // The same request with parallelToolCalls false: one call.
    chat.reset();
    const answer = await chat.prompt(SUMS, { tools, toolChoice: { name: 'add' }, parallelToolCalls: false, seed, ...LONG });
    expect(answer.toolCalls).toHaveLength(1);
    expectValid(answer.toolCalls!, ['add']);
  }, 300_000);

  it('runs the handlers and completes a two-round conversation', async () => {
    let seen: { args: unknown; call: ToolCall }[] = [];
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    // A seed where the model calls once, then answers with the result (it may also call again: findSeed).
    const { outcome: answer } = await findSeed(async (seed) => {
      chat.reset();
      seen = [];
      return chat.prompt('北京天气怎么样？', {
        tools: { get_weather: { ...weather, handler: (args, call) => (seen.push({ args, call }), { sky: '晴', temperature: 21 }) } },
        toolChoice: 'required', seed, ...LONG,
      });
    }, () => seen.length === 1 && chat.history.length === 5);
    expect(seen).toHaveLength(1);
    expectValid([seen[0].call], ['get_weather']);
    expect(seen[0].args).toEqual(seen[0].call.arguments);
    expect(answer.toolCalls).toBeUndefined();
    const history = chat.history;
    expect(history.map((m) => m.role)).toEqual(['system', 'user', 'assistant', 'tool', 'assistant']);
    expect(history[2]).toEqual({ role: 'assistant', content: '', toolCalls: [seen[0].call] });
    expect(history[3]).toEqual({ role: 'tool', toolCallId: 'call_1', name: 'get_weather', content: '{"sky":"晴","temperature":21}' });
    expect(history[4]).toEqual({ role: 'assistant', content: answer.text });
    // The conversation goes on as usual.
    const next = await chat.prompt('谢谢', { maxTokens: 8 });
    expect(next.generation.reusedTokens).toBeGreaterThan(0);
  }, 120_000);

  it("turns a handler's throw into the tool's result and goes on", async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    // A seed where the model answers after the error (it may also call again, up to maxToolRounds: findSeed).
    const { outcome: answer } = await findSeed(async (seed) => {
      chat.reset();
      return chat.prompt('北京天气怎么样？', {
        tools: { get_weather: { ...weather, handler: async () => { throw new Error('the weather service is down'); } } },
        toolChoice: 'required', maxToolRounds: 2, seed, ...LONG,
      }).catch((e: unknown) => e);
    }, (outcome) => !(outcome instanceof Error));
    expect(typeof (answer as { text: string }).text).toBe('string');
    const tool = chat.history.find((m) => m.role === 'tool');
    expect(tool).toMatchObject({ role: 'tool', toolCallId: 'call_1', content: 'Error: the weather service is down' });
  }, 120_000);

  it('gives up past maxToolRounds with a ToolCallError, the last calls left waiting', async () => {
    let runs = 0;
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    // After the first round the model may answer instead of calling again: a seed where it keeps calling.
    const { outcome: error } = await findSeed(async (seed) => {
      chat.reset();
      runs = 0;
      return chat.prompt('北京天气怎么样？', {
        tools: { get_weather: { ...weather, handler: () => (runs++, { sky: '晴', temperature: 21 }) } }, toolChoice: 'required', maxToolRounds: 2,
        seed, ...LONG,
      }).catch((e: unknown) => e as ToolCallError);
    }, (outcome) => outcome instanceof ToolCallError);
    expect(error).toBeInstanceOf(ToolCallError);
    expect(error).toMatchObject({ code: 'ERR_HUOZI_TOOL_CALL', reason: 'maxToolRounds' });
    expect(runs).toBe(2);
    expect(chat.history.at(-1)).toMatchObject({ role: 'assistant', toolCalls: error.toolCalls });
    // A new message waits for those results.
    await expect(chat.prompt('你好')).rejects.toMatchObject({ name: 'ToolCallError', reason: 'pending' });
  }, 120_000);

  it('lets the caller run the calls: addToolResult, then respond()', async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    const { outcome: answer } = await findSeed(async (seed) => {
      chat.reset();
      return chat.prompt(SUMS, { tools, toolChoice: { name: 'add' }, seed, ...LONG });
    }, (a) => a.toolCalls?.length === 2);
    const calls = answer.toolCalls!;
    expect(calls).toHaveLength(2);
    // Until every call has its result, a new user message is refused, as is an unknown id.
    expect(() => chat.stream('hi')).toThrow(ToolCallError);
    await expect(chat.respond({ tools })).rejects.toMatchObject({ reason: 'pending', toolCalls: calls });
    expect(() => chat.addToolResult('call_9', 1)).toThrow(RangeError);
    for (const call of calls) {
      const { a, b } = call.arguments as { a: number; b: number };
      chat.addToolResult(call.id, a + b);
    }
    expect(() => chat.addToolResult(calls[0].id, 0)).toThrow(RangeError);
    const final = await chat.respond({ tools, toolChoice: 'none', maxTokens: 16, seed: 1 });
    expect(final.toolCalls).toBeUndefined();
    expect(chat.history.map((m) => m.role)).toEqual(['system', 'user', 'assistant', 'tool', 'tool', 'assistant']);
    // respond() needs something to respond to.
    await expect(chat.respond()).rejects.toThrow(RangeError);
  }, 120_000);

  it("offers no tools with toolChoice 'none', and describes them otherwise", async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    const none = await chat.prompt('北京天气怎么样？', { tools, toolChoice: 'none', maxTokens: 16, seed: 1 });
    expect(none.toolCalls).toBeUndefined();
    const prompt = (n: number) => model.detokenize(context.tokens.slice(0, n));
    expect(prompt(none.generation.promptTokens)).not.toContain('get_weather');
    expect(prompt(none.generation.promptTokens)).not.toContain('tool_calls');
    expect(chat.history.at(-1)).toEqual({ role: 'assistant', content: none.text });
    chat.reset();
    const auto = await chat.prompt('北京天气怎么样？', { tools, seed: 2, ...LONG });
    const text = prompt(auto.generation.promptTokens);
    expect(text).toContain('查询城市天气');
    expect(text).toContain('Respond in JSON format');
    expect(text).toContain(`${SYSTEM}\n\nRespond in JSON format`);
  }, 120_000);

  it('checks the tools up front: names, the choice, and parameters the converter refuses (naming the tool)', async () => {
    const chat = new ChatSession(context);
    const even = { parameters: { type: 'object', properties: { n: { type: 'integer', multipleOf: 2 } } } };
    const error = await chat.prompt('x', { tools: { add, even } }).catch((e: unknown) => e as GrammarError);
    expect(error).toBeInstanceOf(GrammarError);
    expect(error.message).toContain('tool "even"');
    expect(error).toMatchObject({ keyword: 'multipleOf', path: '#/properties/n/multipleOf' });
    await expect(chat.prompt('x', { tools: [{ name: 'add', ...add }, { name: 'add', ...add }] })).rejects.toThrow(RangeError);
    await expect(chat.prompt('x', { tools: { '1st': add } })).rejects.toThrow(RangeError);
    await expect(chat.prompt('x', { tools: { add: { ...add, returns: {} } as never } })).rejects.toThrow(RangeError);
    await expect(chat.prompt('x', { tools, toolChoice: { name: 'nope' } })).rejects.toThrow(RangeError);
    await expect(chat.prompt('x', { tools: {}, toolChoice: 'required' })).rejects.toThrow(RangeError);
    await expect(chat.prompt('x', { tools, jsonSchema: {} })).rejects.toThrow(TypeError);
    await expect(chat.prompt('x', { tools, maxToolRounds: 0 })).rejects.toThrow(RangeError);
    expect(chat.history).toEqual([]);
  });

  it('saves and loads a session holding tool calls and results, and goes on from it', async () => {
    const chat = new ChatSession(context, { systemPrompt: SYSTEM });
    const answer = await chat.prompt('北京天气怎么样？', { tools, toolChoice: 'required', seed: 0, ...LONG });
    for (const call of answer.toolCalls!) chat.addToolResult(call.id, { ok: true });
    const path = join(mkdtempSync(join(tmpdir(), 'huozi-tools-')), 'chat.session');
    await chat.save(path);
    const other = new ChatSession(context);
    await other.load(path);
    expect(other.history).toEqual(chat.history);
    const next = await other.respond({ tools, toolChoice: 'none', maxTokens: 8 });
    expect(next.generation.promptTokens).toBeGreaterThan(0);
    consistent(other.history);
  }, 120_000);

  it('checks tool messages in setHistory: each result after its call, once', () => {
    const chat = new ChatSession(context);
    const call = { id: 'c1', name: 'add', arguments: { a: 1, b: 2 } };
    const ok: ConversationMessage[] = [
      { role: 'user', content: '1+2?' },
      { role: 'assistant', content: '', toolCalls: [call] },
      { role: 'tool', toolCallId: 'c1', name: 'add', content: '3' },
    ];
    chat.setHistory(ok);
    expect(chat.history).toEqual(ok);
    expect(() => chat.setHistory([ok[0], ok[2]])).toThrow(RangeError);
    expect(() => chat.setHistory([...ok, ok[2]])).toThrow(RangeError);
    expect(() => chat.setHistory([ok[0], ok[1], { ...ok[2], name: 'other' } as ConversationMessage])).toThrow(RangeError);
    expect(() => chat.setHistory([{ role: 'user', content: 'x', toolCalls: [call] } as never])).toThrow(RangeError);
    expect(() => chat.setHistory([ok[0], { role: 'assistant', content: '', toolCalls: [{ ...call, arguments: 'x' }] } as never])).toThrow(TypeError);
  });

  it('drops the oldest exchanges with their tool calls and results when the context is full', async () => {
    await using small = await model.createContext({ contextSize: 512, threads: 2 });
    const chat = new ChatSession(small, { systemPrompt: SYSTEM });
    const history: ConversationMessage[] = [{ role: 'system', content: SYSTEM }];
    for (let i = 0; i < 8; i++) {
      history.push(
        { role: 'user', content: `请计算 ${i}+${i}，然后告诉我北京的天气怎么样，越详细越好` },
        { role: 'assistant', content: '', toolCalls: [{ id: `c${i}`, name: 'add', arguments: { a: i, b: i } }] },
        { role: 'tool', toolCallId: `c${i}`, name: 'add', content: String(2 * i) },
        { role: 'assistant', content: `结果是 ${2 * i}。北京今天晴，气温二十一度，微风，空气质量良好，适合出门散步。` },
      );
    }
    chat.setHistory(history);
    const answer = await chat.prompt('还有吗？', { maxTokens: 16, seed: 1 });
    expect(answer.droppedMessages).toBeGreaterThan(0);
    expect(answer.droppedMessages % 4).toBe(0);
    const kept = chat.history;
    expect(kept[0]).toEqual({ role: 'system', content: SYSTEM });
    expect(kept[1].role).toBe('user');
    consistent(kept);
  });
});
