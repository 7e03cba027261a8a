// The tool-call core (lib/chat/tools.ts) on its own: what ChatSession and the server both build on. No model:
// the system text, the turn's schema (checked with a real JSON Schema validator), parsing a turn, and the
// mapping of a conversation with tool calls into plain template messages.
import Ajv from 'ajv';
import { describe, expect, it } from 'vitest';
import { huoziTemplate } from '../../dist/index.js';
import { ChatAnswerError } from '../../dist/chat/json.js';
import {
  checkConversation, newToolCallIds, normalizeToolChoice, normalizeTools, parseToolTurn, pendingToolCalls,
  resultText, templateMessages, toolSystemText, toolTurn, turnSchema, type ConversationMessage,
} from '../../dist/chat/tools.js';

const weather = {
  description: 'Weather of a city',
  parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
};
const route = {
  parameters: {
    $defs: { place: { type: 'object', properties: { name: { type: 'string' } }, required: ['name'] } },
    type: 'object',
    properties: { from: { $ref: '#/$defs/place' }, to: { $ref: '#/$defs/place' }, via: { const: { $ref: '#/not/a/ref' } } },
    required: ['from', 'to'],
  },
};

describe('normalizeTools and normalizeToolChoice', () => {
  it('takes a record or a list, and fills in what is optional', () => {
    const fromRecord = normalizeTools({ get_weather: weather, ping: {} });
    expect(fromRecord.map((t) => t.name)).toEqual(['get_weather', 'ping']);
    expect(fromRecord[1]).toEqual({ name: 'ping', description: undefined, parameters: { type: 'object', properties: {} }, handler: undefined });
    expect(normalizeTools([{ name: 'get_weather', ...weather }])).toEqual([fromRecord[0]]);
  });

  it.each([
    ['a duplicate name', [{ name: 'a' }, { name: 'a' }], RangeError],
    ['a name starting with a digit', { '1a': {} }, RangeError],
    ['a name with a space', { 'get weather': {} }, RangeError],
    ['a name longer than 64', { ['a'.repeat(65)]: {} }, RangeError],
    ['an unknown key', { a: { returns: {} } }, RangeError],
    ['parameters of another type', { a: { parameters: { type: 'string' } } }, RangeError],
    ['parameters that are not an object', { a: { parameters: [] } }, TypeError],
    ['a handler that is not a function', { a: { handler: 'x' } }, TypeError],
    ['a description that is not a string', { a: { description: 1 } }, TypeError],
    ['a list item without a name', [{}], TypeError],
    ['no tools at all', 'get_weather', TypeError],
  ])('refuses %s', (_, tools, type) => {
    expect(() => normalizeTools(tools)).toThrow(type);
  });

  it('checks the choice against the tools', () => {
    const tools = normalizeTools({ get_weather: weather });
    expect(normalizeToolChoice('auto', tools)).toBe('auto');
    expect(normalizeToolChoice({ name: 'get_weather' }, tools)).toEqual({ name: 'get_weather' });
    expect(() => normalizeToolChoice({ name: 'other' }, tools)).toThrow(RangeError);
    expect(() => normalizeToolChoice({ name: 'get_weather', x: 1 }, tools)).toThrow(TypeError);
    expect(() => normalizeToolChoice('always', tools)).toThrow(RangeError);
    expect(() => normalizeToolChoice('required', [])).toThrow(RangeError);
    expect(normalizeToolChoice('none', [])).toBe('none');
  });
});

describe('toolSystemText', () => {
  it("says what llama.cpp's generic format says, and lists the tools as OpenAI does", () => {
    const text = toolSystemText(toolTurn({ tools: { get_weather: weather } }))!;
    expect(text).toMatch(/^Respond in JSON format, either with `tool_calls` \(a request to call tools\) or with `response`/);
    expect(text).toContain("You can call any of the following tools to satisfy the user's requests: [");
    const list = JSON.parse(text.slice(text.indexOf('['), text.indexOf('\n\nExample')));
    expect(list).toEqual([{ type: 'function', function: { name: 'get_weather', ...weather } }]);
    expect(text).toContain('Example tool call syntax:');
  });

  it('follows the choice and the parallel setting', () => {
    expect(toolSystemText(toolTurn({ tools: { get_weather: weather }, choice: 'required' }))).toMatch(/^Respond in JSON format with `tool_calls`/);
    expect(toolSystemText(toolTurn({ tools: { get_weather: weather }, choice: { name: 'get_weather' }, parallel: false })))
      .toMatch(/the tool `get_weather` \(one call at most\)/);
    expect(toolSystemText(toolTurn({ tools: { get_weather: weather }, choice: 'none' }))).toBeUndefined();
    expect(toolSystemText(toolTurn({ tools: {} }))).toBeUndefined();
  });
});

describe('turnSchema', () => {
  const ajv = new Ajv({ strict: false });
  const call = (name: string, args: object) => ({ name, arguments: args });

  it("accepts calls of the offered tools with valid arguments, or a response with 'auto'", () => {
    const validate = ajv.compile(turnSchema(toolTurn({ tools: { get_weather: weather, route } }))!);
    expect(validate({ tool_calls: [call('get_weather', { city: 'Paris' })] })).toBe(true);
    expect(validate({ tool_calls: [call('get_weather', { city: 'Paris' }), call('route', { from: { name: 'a' }, to: { name: 'b' } })] })).toBe(true);
    expect(validate({ response: 'hello' })).toBe(true);
    expect(validate({ tool_calls: [] })).toBe(false);
    expect(validate({ tool_calls: [call('get_weather', {})] })).toBe(false);
    expect(validate({ tool_calls: [call('other', { city: 'Paris' })] })).toBe(false);
    expect(validate({ tool_calls: [{ ...call('get_weather', { city: 'x' }), id: 'x' }] })).toBe(false);
    expect(validate({ response: 1 })).toBe(false);
  });

  it("keeps each tool's own $refs pointing into its own $defs (and leaves data alone)", () => {
    const schema = turnSchema(toolTurn({ tools: { get_weather: weather, route }, choice: 'required' })) as Record<string, any>;
    expect(schema.$defs.tool1.properties.from).toEqual({ $ref: '#/$defs/tool1/$defs/place' });
    expect(schema.$defs.tool1.properties.via).toEqual({ const: { $ref: '#/not/a/ref' } });
    const validate = ajv.compile(schema);
    expect(validate({ tool_calls: [call('route', { from: { name: 'a' }, to: { name: 'b' } })] })).toBe(true);
    expect(validate({ tool_calls: [call('route', { from: { name: 1 }, to: { name: 'b' } })] })).toBe(false);
    expect(validate({ response: 'hello' })).toBe(false);
  });

  it('allows one call without parallel calls, only the named tool, and nothing with none', () => {
    const single = ajv.compile(turnSchema(toolTurn({ tools: { get_weather: weather }, parallel: false }))!);
    expect(single({ tool_calls: [call('get_weather', { city: 'a' })] })).toBe(true);
    expect(single({ tool_calls: [call('get_weather', { city: 'a' }), call('get_weather', { city: 'b' })] })).toBe(false);
    const named = ajv.compile(turnSchema(toolTurn({ tools: { get_weather: weather, route }, choice: { name: 'get_weather' } }))!);
    expect(named({ tool_calls: [call('get_weather', { city: 'a' })] })).toBe(true);
    expect(named({ tool_calls: [call('route', { from: { name: 'a' }, to: { name: 'b' } })] })).toBe(false);
    expect(turnSchema(toolTurn({ tools: { get_weather: weather }, choice: 'none' }))).toBeUndefined();
  });
});

describe('parseToolTurn', () => {
  const turn = toolTurn({ tools: { get_weather: weather, route } });
  it('reads calls and answers, whatever the whitespace', () => {
    expect(parseToolTurn('{\n\t"tool_calls" : [ {"name":"get_weather", "arguments": {"city": "Paris"}} ]\n}', turn))
      .toEqual({ calls: [{ name: 'get_weather', arguments: { city: 'Paris' } }] });
    expect(parseToolTurn('{"response": "hi"}', turn)).toEqual({ response: 'hi' });
    // llama.cpp's generic format writes a single call as tool_call.
    expect(parseToolTurn('{"tool_call": {"name": "get_weather", "arguments": {"city": "a"}}}', turn))
      .toEqual({ calls: [{ name: 'get_weather', arguments: { city: 'a' } }] });
  });

  it.each([
    ['text that is not JSON', '{"tool_calls": [', turn],
    ['JSON that is not an object', '[1]', turn],
    ['no calls', '{"tool_calls": []}', turn],
    ['a call of a tool not offered', '{"tool_calls": [{"name": "other", "arguments": {}}]}', turn],
    ['a call without arguments', '{"tool_calls": [{"name": "get_weather"}]}', turn],
    ['two calls without parallel calls', '{"tool_calls": [{"name": "get_weather", "arguments": {}}, {"name": "get_weather", "arguments": {}}]}',
      toolTurn({ tools: { get_weather: weather }, parallel: false })],
    ['an answer when calls are required', '{"response": "hi"}', toolTurn({ tools: { get_weather: weather }, choice: 'required' })],
    ['a call of another tool than the named one', '{"tool_calls": [{"name": "route", "arguments": {}}]}',
      toolTurn({ tools: { get_weather: weather, route }, choice: { name: 'get_weather' } })],
  ])('refuses %s with ChatAnswerError (invalid)', (_, text, t) => {
    let error: unknown;
    try {
      parseToolTurn(text, t);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ChatAnswerError);
    expect(error).toMatchObject({ code: 'ERR_HUOZI_CHAT_ANSWER', reason: 'invalid', text });
  });
});

describe('templateMessages', () => {
  const conversation: ConversationMessage[] = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Weather in Paris and Rome?' },
    {
      role: 'assistant', content: '', toolCalls: [
        { id: 'call_1', name: 'get_weather', arguments: { city: 'Paris' } },
        { id: 'call_2', name: 'get_weather', arguments: { city: 'Rome' } },
      ],
    },
    { role: 'tool', toolCallId: 'call_1', name: 'get_weather', content: 'sunny' },
    // The server's tool messages may leave out the name: it comes from the call.
    { role: 'tool', toolCallId: 'call_2', content: 'rain' },
    { role: 'assistant', content: 'Sunny in Paris, rain in Rome.' },
  ];

  it("renders calls and results as llama.cpp's polyfills do, results as user messages", () => {
    const out = templateMessages(conversation);
    expect(out.map((m) => m.role)).toEqual(['system', 'user', 'assistant', 'user', 'user', 'assistant']);
    expect(out[2].content).toBe(JSON.stringify({
      tool_calls: [
        { name: 'get_weather', arguments: { city: 'Paris' }, id: 'call_1' },
        { name: 'get_weather', arguments: { city: 'Rome' }, id: 'call_2' },
      ],
    }, null, 2));
    expect(JSON.parse(out[3].content)).toEqual({ tool_response: { tool: 'get_weather', content: 'sunny', tool_call_id: 'call_1' } });
    expect(JSON.parse(out[4].content)).toEqual({ tool_response: { tool: 'get_weather', content: 'rain', tool_call_id: 'call_2' } });
    expect(out[5]).toBe(conversation[5]);
    // A template renders the result like any conversation.
    expect(huoziTemplate.render(out, true).map((s) => s.text).join('')).toContain('"tool_response"');
  });

  it("adds the tools' description to the system prompt, or as one, when the turn offers tools", () => {
    const turn = toolTurn({ tools: { get_weather: weather } });
    const out = templateMessages(conversation, turn);
    expect(out[0]).toEqual({ role: 'system', content: `Be brief.\n\n${toolSystemText(turn)}` });
    const noSystem = templateMessages(conversation.slice(1, 2), turn);
    expect(noSystem).toEqual([{ role: 'system', content: toolSystemText(turn) }, conversation[1]]);
    expect(templateMessages(conversation.slice(0, 2), toolTurn({ tools: { get_weather: weather }, choice: 'none' })))
      .toEqual(conversation.slice(0, 2));
  });
});

describe('conversation bookkeeping', () => {
  const calls = [
    { id: 'call_1', name: 'a', arguments: {} },
    { id: 'call_2', name: 'b', arguments: {} },
  ];
  const base: ConversationMessage[] = [{ role: 'user', content: 'x' }, { role: 'assistant', content: '', toolCalls: calls }];

  it('knows which calls wait for results', () => {
    expect(pendingToolCalls(base)).toEqual(calls);
    const one: ConversationMessage[] = [...base, { role: 'tool', toolCallId: 'call_2', name: 'b', content: '' }];
    expect(pendingToolCalls(one)).toEqual([calls[0]]);
    expect(pendingToolCalls([...one, { role: 'tool', toolCallId: 'call_1', content: '' }])).toEqual([]);
    expect(pendingToolCalls([...base, { role: 'user', content: 'y' }])).toEqual([]);
    expect(pendingToolCalls([])).toEqual([]);
  });

  it('numbers new calls after the ones made, never reusing an id', () => {
    expect(newToolCallIds([], 2)).toEqual(['call_1', 'call_2']);
    expect(newToolCallIds(base, 2)).toEqual(['call_3', 'call_4']);
    const odd: ConversationMessage[] = [{ role: 'assistant', content: '', toolCalls: [{ id: 'call_2', name: 'a', arguments: {} }] }];
    expect(newToolCallIds(odd, 2)).toEqual(['call_3', 'call_4']);
  });

  it('checks that results answer calls made before them, once', () => {
    expect(() => checkConversation([...base, { role: 'tool', toolCallId: 'call_1', content: '' }])).not.toThrow();
    expect(() => checkConversation([{ role: 'tool', toolCallId: 'call_1', content: '' }, ...base])).toThrow(RangeError);
    expect(() => checkConversation([...base, { role: 'tool', toolCallId: 'call_1', content: '' }, { role: 'tool', toolCallId: 'call_1', content: '' }]))
      .toThrow(RangeError);
    expect(() => checkConversation([...base, ...base])).toThrow(RangeError);
    expect(() => checkConversation([...base, { role: 'tool', toolCallId: 'call_1', name: 'b', content: '' }])).toThrow(RangeError);
  });

  it("turns a handler's result into text", () => {
    expect(resultText('as is')).toBe('as is');
    expect(resultText({ a: [1, 2] })).toBe('{"a":[1,2]}');
    expect(resultText(3)).toBe('3');
    expect(resultText(undefined)).toBe('');
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    expect(resultText(loop)).toBe('[object Object]');
  });
});
