// ChatSession.promptJson (issue #16): answers constrained by a JSON Schema, parsed, valid for the schema (checked
// with a real validator), joining the history like prompt(); a cut answer is a typed error, never half a value.
import Ajv from 'ajv';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChatAnswerError, ChatSession, GrammarError, loadModel, type Context, type Model } from '../../dist/index.js';
import { demoPath } from '../helpers.js';

let model: Model;
let context: Context;
beforeAll(async () => {
  model = await loadModel(demoPath);
  context = await model.createContext({ contextSize: 2048, threads: 2 });
});
afterAll(async () => {
  await model.dispose();
});

const SCHEMAS: Record<string, object> = {
  'a nested object with optional fields': {
    type: 'object',
    properties: {
      name: { type: 'string', maxLength: 16 },
      age: { type: 'integer', minimum: 0, maximum: 150 },
      address: {
        type: 'object',
        properties: { city: { type: 'string', maxLength: 12 }, zip: { type: 'string', pattern: '^[0-9]{6}$' } },
        required: ['city'],
      },
      vip: { type: 'boolean' },
    },
    required: ['name', 'age', 'address'],
  },
  'an array of enums with min and max items': {
    type: 'object',
    properties: {
      tags: { type: 'array', items: { type: 'string', enum: ['诗', '词', '曲', 'prose'] }, minItems: 1, maxItems: 4 },
      score: { type: 'number' },
      mood: { enum: ['happy', 'sad', null] },
    },
    required: ['tags', 'score', 'mood'],
  },
  '$ref to $defs and anyOf': {
    $defs: {
      point: { type: 'object', properties: { x: { type: 'integer' }, y: { type: 'integer' } }, required: ['x', 'y'] },
    },
    type: 'object',
    properties: {
      shape: { anyOf: [{ const: 'line' }, { const: 'dot' }] },
      points: { type: 'array', items: { $ref: '#/$defs/point' }, minItems: 1, maxItems: 3 },
    },
    required: ['shape', 'points'],
  },
};

describe('ChatSession.promptJson', () => {
  const ajv = new Ajv({ strict: false });
  // The converter's whitespace rule lets the tiny model indent each field by up to 20 tabs, a token each: room
  // for that, so that every sample ends where its grammar does.
  for (const [name, schema] of Object.entries(SCHEMAS)) {
    it(`answers with values valid for ${name} (20 seeds)`, async () => {
      const validate = ajv.compile(schema);
      const chat = new ChatSession(context, { systemPrompt: '你是一个智能助手' });
      for (let seed = 0; seed < 20; seed++) {
        chat.reset();
        const value = await chat.promptJson('请用JSON回答', { schema, seed, temperature: 1, maxTokens: 1200 });
        expect(validate(value), `seed ${seed}: ${JSON.stringify(value)} ${ajv.errorsText(validate.errors)}`).toBe(true);
        // The turn joined the history as the JSON text the model wrote.
        const last = chat.history.at(-1)!;
        expect(last.role).toBe('assistant');
        expect(JSON.parse(last.content)).toEqual(value);
      }
    }, 600_000);
  }

  it('returns the parsed value typed as asked, and the next turn goes on from it', async () => {
    const chat = new ChatSession(context);
    const value = await chat.promptJson<{ ok: boolean }>('Answer', {
      schema: { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'] }, seed: 1, temperature: 0.5,
    });
    expect(typeof value.ok).toBe('boolean');
    expect(chat.history.map((m) => m.role)).toEqual(['user', 'assistant']);
    const next = await chat.prompt('And now?', { maxTokens: 8 });
    expect(next.generation.reusedTokens).toBeGreaterThan(0);
    expect(chat.history).toHaveLength(4);
  });

  it('is a ChatAnswerError (incomplete) with the result when maxTokens cuts the JSON, and the text joins the history', async () => {
    const chat = new ChatSession(context);
    const schema = { type: 'object', properties: { poem: { type: 'string' } }, required: ['poem'] };
    const error = await chat.promptJson('背诵一首诗', { schema, maxTokens: 4, seed: 3 }).catch((e: unknown) => e as ChatAnswerError);
    expect(error).toBeInstanceOf(ChatAnswerError);
    expect(error).toMatchObject({ code: 'ERR_HUOZI_CHAT_ANSWER', reason: 'incomplete' });
    expect(error.result?.stopReason).toBe('maxTokens');
    expect(error.result?.tokens).toHaveLength(4);
    expect(chat.history.at(-1)).toEqual({ role: 'assistant', content: error.text });
  });

  it('refuses a schema the converter cannot honour before generating, and checks its options', async () => {
    const chat = new ChatSession(context);
    await expect(chat.promptJson('x', { schema: { type: 'integer', multipleOf: 3 } })).rejects.toThrow(GrammarError);
    expect(chat.history).toEqual([]);
    await expect(chat.promptJson('x', { schema: 'object' as never })).rejects.toThrow(TypeError);
    await expect(chat.promptJson('x', { schema: {}, jsonSchema: {} } as never)).rejects.toThrow(/jsonSchema/);
    await expect(chat.promptJson('x', undefined as never)).rejects.toThrow(TypeError);
  });
});
