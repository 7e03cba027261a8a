// Constrained answers from the server: OpenAI's response_format, vLLM's guided_* fields and llama-server's
// grammar / json_schema, on the tiny Huozi model through the official `openai` client where a client would send
// them, with answers checked by a real JSON Schema validator (ajv) and by JavaScript's own regexes.
import Ajv from 'ajv';
import { describe, expect, it } from 'vitest';
import { Grammar } from '../../dist/index.js';
import { regexToGbnf, RegexError } from '../../dist/server/regex.js';
import { serveTinyModel } from './serve.js';

const served = serveTinyModel({ parallel: 4, contextSize: 4096 });

const ask = (content: string) => ({ model: 'huozi', messages: [{ role: 'user' as const, content }] });

// Nested objects, an enum, an array with bounds, an optional field, a $ref: bounded so that an answer at
// temperature 1.5 ends well within max_tokens.
const PERSON = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 12 },
    age: { type: 'integer', minimum: 0, maximum: 150 },
    season: { enum: ['春', '夏', '秋', '冬'] },
    poems: { type: 'array', items: { $ref: '#/$defs/poem' }, minItems: 1, maxItems: 2 },
    note: { type: 'string', maxLength: 8 },
  },
  required: ['name', 'age', 'season', 'poems'],
  additionalProperties: false,
  $defs: {
    poem: {
      type: 'object',
      properties: { title: { type: 'string', maxLength: 8 }, lines: { type: 'integer', minimum: 1, maximum: 8 } },
      required: ['title', 'lines'],
      additionalProperties: false,
    },
  },
} as const;

describe('response_format json_schema through the openai client', () => {
  it('20 seeded answers at temperature 1.5 all parse and validate with ajv', async () => {
    const validate = new Ajv({ strict: false }).compile(PERSON);
    for (let seed = 0; seed < 20; seed++) {
      const completion = await served.client.chat.completions.create({
        ...ask('介绍一位诗人'),
        temperature: 1.5,
        seed,
        // The converter's whitespace (up to a newline and 20 tabs between tokens) is where a hot sampler spends tokens.
        max_tokens: 1000,
        response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON, strict: true, description: '一位诗人' } },
      });
      const choice = completion.choices[0];
      expect(choice.finish_reason, `seed ${seed}: ${choice.message.content}`).toBe('stop');
      const value = JSON.parse(choice.message.content!);
      expect(validate(value), `seed ${seed}: ${choice.message.content} ${JSON.stringify(validate.errors)}`).toBe(true);
    }
  });

  it('streams an answer that validates too', async () => {
    const stream = await served.client.chat.completions.create({
      ...ask('介绍一位诗人'), temperature: 1, seed: 3, max_tokens: 1000, stream: true,
      response_format: { type: 'json_schema', json_schema: { name: 'person', schema: PERSON } },
    });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(new Ajv({ strict: false }).validate(PERSON, JSON.parse(text))).toBe(true);
  });

  it('json_object: any JSON object', async () => {
    for (let seed = 0; seed < 3; seed++) {
      const completion = await served.client.chat.completions.create({
        ...ask('用JSON回答'), temperature: 0.8, seed, max_tokens: 200, response_format: { type: 'json_object' },
      });
      const text = completion.choices[0].message.content!;
      if (completion.choices[0].finish_reason === 'stop') {
        const value = JSON.parse(text);
        expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
      } else expect(text.trimStart().startsWith('{')).toBe(true);
    }
  });

  it('a json_schema without a schema is any JSON object; text asks for nothing', async () => {
    const r = await served.post({ ...ask('用JSON回答'), temperature: 0, max_tokens: 100, response_format: { type: 'json_schema', json_schema: { name: 'any' } } });
    expect(r.status).toBe(200);
    expect(r.json.choices[0].message.content.trimStart().startsWith('{')).toBe(true);
    const plain = await served.post({ ...ask('请背诵《春晓》'), temperature: 0, max_tokens: 12, response_format: { type: 'text' } });
    expect(plain.json.choices[0].message.content).toContain('春晓');
  });

  it.each([
    ['an unknown type', { type: 'xml' }, 'response_format.type'],
    ['a bad schema name', { type: 'json_schema', json_schema: { name: 'a b', schema: {} } }, 'response_format.json_schema.name'],
    ['an unknown member', { type: 'json_object', schema: {} }, 'response_format.schema'],
    ['strict not a boolean', { type: 'json_schema', json_schema: { name: 'x', schema: {}, strict: 'yes' } }, 'response_format.json_schema.strict'],
  ])('%s: 400 naming it', async (_, format, param) => {
    const r = await served.post({ ...ask('x'), response_format: format });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe(param);
  });

  it('a schema keyword the converter cannot honour: 400 naming response_format and the keyword', async () => {
    const r = await served.post({
      ...ask('x'),
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object', properties: { n: { type: 'integer', multipleOf: 3 } } } } },
    });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('response_format');
    expect(r.json.error.message).toContain('multipleOf');
    await expect(served.client.chat.completions.create({
      ...ask('x'), response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { not: { type: 'string' } } } },
    })).rejects.toMatchObject({ status: 400 });
  });
});

describe("vLLM's guided decoding", () => {
  it('guided_json (an object, or its JSON text) validates', async () => {
    const schema = {
      type: 'object', properties: { season: { enum: ['春', '夏'] }, n: { type: 'integer', minimum: 1, maximum: 9 } }, required: ['season', 'n'],
      additionalProperties: false,
    };
    for (const guided of [schema, JSON.stringify(schema)]) {
      const r = await served.post({ ...ask('季节'), temperature: 1, seed: 7, max_tokens: 300, guided_json: guided });
      expect(r.status).toBe(200);
      expect(new Ajv().validate(schema, JSON.parse(r.json.choices[0].message.content))).toBe(true);
    }
  });

  it('guided_choice: exactly one of the choices, on both endpoints', async () => {
    const choices = ['春天', '夏天', '秋天 and "冬天"'];
    const seen = new Set<string>();
    for (let seed = 0; seed < 6; seed++) {
      const r = await served.post({ ...ask('哪个季节最好？'), temperature: 1.5, seed, max_tokens: 20, guided_choice: choices });
      expect(choices).toContain(r.json.choices[0].message.content);
      seen.add(r.json.choices[0].message.content);
    }
    const c = await served.post({ model: 'huozi', prompt: '春眠', temperature: 1, seed: 1, max_tokens: 20, guided_choice: ['A', 'B'] }, '/v1/completions');
    expect(['A', 'B']).toContain(c.json.choices[0].text);
  });

  it('guided_regex: every answer matches the whole regex', async () => {
    for (const pattern of ['\\d{3}-[a-z]{2,4}', '(春|夏|秋|冬)天[^\\s，。]{1,3}', '[A-Z][a-z]+(, [A-Z][a-z]+)?\\.', 'v\\d{1,3}\\.\\d{1,3}(\\.\\d{1,3})?']) {
      const re = new RegExp(`^(?:${pattern})$`);
      for (let seed = 0; seed < 4; seed++) {
        const r = await served.post({ ...ask('回答'), temperature: 1.2, seed, max_tokens: 40, guided_regex: pattern });
        expect(r.status).toBe(200);
        const text = r.json.choices[0].message.content as string;
        expect(r.json.choices[0].finish_reason, `${pattern}: ${text}`).toBe('stop');
        expect(text, pattern).toMatch(re);
      }
    }
  });

  it.each([
    ['(?=a)b', 'lookahead'],
    ['(a)\\1', 'backreference'],
    ['\\bword', 'word boundary'],
    ['a++', 'possessive'],
    ['(?i)abc', 'inline flags'],
    ['a$b', "'$'"],
    ['\\p{L}+', 'Unicode property'],
  ])('guided_regex %s: 400 naming guided_regex and the feature', async (pattern, feature) => {
    const r = await served.post({ ...ask('x'), guided_regex: pattern });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('guided_regex');
    expect(r.json.error.code).toBe('unsupported_parameter');
    expect(r.json.error.message).toContain(feature);
  });

  it('guided_grammar and llama-server grammar: the answer is in the language; a bad grammar is 400 with its position', async () => {
    const gbnf = 'root ::= "答：" digit digit? "个"\ndigit ::= [0-9]';
    for (const field of ['guided_grammar', 'grammar']) {
      const r = await served.post({ ...ask('几个？'), temperature: 1, seed: 2, max_tokens: 20, [field]: gbnf });
      expect(r.json.choices[0].message.content).toMatch(/^答：\d\d?个$/);
      const broken = await served.post({ ...ask('x'), [field]: 'root ::= "a" undefined-rule' });
      expect(broken.status).toBe(400);
      expect(broken.json.error.param).toBe(field);
      expect(broken.json.error.message).toMatch(/undefined-rule|byte \d+/);
    }
  });

  it("llama-server's json_schema validates", async () => {
    const schema = { type: 'array', items: { type: 'integer', minimum: 0, maximum: 99 }, minItems: 2, maxItems: 3 };
    const r = await served.post({ model: 'huozi', prompt: '数字：', temperature: 1, seed: 5, max_tokens: 40, json_schema: schema }, '/v1/completions');
    expect(new Ajv().validate(schema, JSON.parse(r.json.choices[0].text))).toBe(true);
  });

  it('two constraints: 400 naming both', async () => {
    const r = await served.post({ ...ask('x'), response_format: { type: 'json_object' }, guided_choice: ['a'] });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toContain("'response_format' and 'guided_choice'");
    const t = await served.post({ ...ask('x'), grammar: 'root ::= "a"', json_schema: {} });
    expect(t.json.error.message).toContain("'grammar' and 'json_schema'");
    // response_format text asks for nothing: no conflict.
    expect((await served.post({ ...ask('x'), max_tokens: 3, response_format: { type: 'text' }, guided_choice: ['a'] })).json.choices[0].message.content).toBe('a');
  });

  it('guided_whitespace_pattern is not implemented: 400 naming it', async () => {
    const r = await served.post({ ...ask('x'), guided_json: {}, guided_whitespace_pattern: '[ ]?' });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('guided_whitespace_pattern');
  });
});

describe('the regex converter', () => {
  it('turns the documented subset into grammars that compile', () => {
    for (const pattern of [
      '^\\d{3}-\\d{4}$', '(cat|dog)s?', '[A-Z][a-z]+ [^\\s]{2,}', 'a.b\\.c', 'x{2,}y*?', '(?<n>ab)+|c', '(?P<x>[\\w-]+)@[a-z]+\\.com',
      '[\\]a-]', '\\u4e00{1,3}\\x41\\t', '', '{', 'a{,3}', '[^"\\\\]*',
    ]) {
      expect(() => Grammar.compile(regexToGbnf(pattern)), pattern).not.toThrow();
    }
  });

  it('names what it cannot express', () => {
    const feature = (pattern: string) => {
      try {
        regexToGbnf(pattern);
      } catch (error) {
        expect(error).toBeInstanceOf(RegexError);
        return (error as RegexError).feature;
      }
      return 'none';
    };
    expect(feature('(?<=a)b')).toBe('lookbehind');
    expect(feature('(?!a)b')).toBe('lookahead');
    expect(feature('\\k<x>')).toBe('backreference');
    expect(feature('[\\D]')).toBe('negated shorthand in a class');
    expect(feature('a{5000}')).toBe('large repetition count');
    expect(feature('(ab')).toBe('syntax');
    expect(feature('*a')).toBe('syntax');
  });
});
