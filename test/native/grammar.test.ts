// Constrained output (issue #16): GBNF grammars and JSON Schemas on the real llama.cpp, the errors and limits of
// compiling them, and the logit bias.
import { randomBytes } from 'node:crypto';
import Ajv2020 from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ChatSession, GRAMMAR_LIMITS, Grammar, GrammarError, loadModel, type Context, type Model, type ParallelContext,
} from '../../dist/index.js';
import { demoPath } from '../helpers.js';

let model: Model;
let context: Context;
let parallel: ParallelContext;
beforeAll(async () => {
  model = await loadModel(demoPath);
  context = await model.createContext({ contextSize: 2048, threads: 2 });
  parallel = await model.createParallelContext({ contextSize: 1024, parallel: 2, threads: 2 });
});
afterAll(async () => {
  await parallel.dispose();
  await model.dispose();
});

const grammarError = (details: object) => expect.objectContaining({ name: 'GrammarError', code: 'ERR_HUOZI_GRAMMAR', ...details });

describe('GBNF', () => {
  it('constrains 50 seeded samples at temperature 1.5 to the grammar', async () => {
    const yesNo = Grammar.compile('root ::= "yes" | "no"');
    const seen = new Set<string>();
    for (let seed = 0; seed < 50; seed++) {
      const r = await context.generate('Is the sky green?', { grammar: yesNo, temperature: 1.5, seed, maxTokens: 20 }).result;
      expect(r.text).toMatch(/^(yes|no)$/);
      expect(r.stopReason).toBe('eog');
      seen.add(r.text);
    }
    expect(seen.size).toBe(2);
  });

  it('takes the grammar as text too, and the same seed gives the same answer', async () => {
    const options = { grammar: 'root ::= [a-z]{3,8} " " [0-9]+', temperature: 1.5, seed: 7, maxTokens: 30 };
    const a = await context.generate('Name and number:', options).result;
    expect(a.text).toMatch(/^[a-z]{3,8} [0-9]+$/);
    const b = await context.generate('Name and number:', options).result;
    expect(b.tokens).toEqual(a.tokens);
  });

  it('reuses one Grammar across calls, a Context, a ParallelContext and a chat', async () => {
    const g = Grammar.compile('answer ::= "A" | "B" | "C"', { root: 'answer' });
    expect(g.root).toBe('answer');
    expect(g.gbnf).toContain('answer ::=');
    const texts = await Promise.all([
      context.generate('Pick:', { grammar: g, seed: 1, temperature: 1.5 }).result,
      parallel.generate('Pick:', { grammar: g, seed: 2, temperature: 1.5 }).result,
      parallel.generate('Pick:', { grammar: g, temperature: 1.5 }).result,
    ]);
    for (const r of texts) expect(r.text).toMatch(/^[ABC]$/);
    const chat = new ChatSession(context);
    const answer = await chat.prompt('Pick a letter', { grammar: g, temperature: 1.5, seed: 3 });
    expect(answer.text).toMatch(/^[ABC]$/);
  });

  it('resolves tokens named by their text against the vocabulary', async () => {
    const g = Grammar.compile('root ::= <|beginofutterance|> "ok"');
    const r = await context.generate('Say:', { grammar: g, temperature: 0, maxTokens: 10 }).result;
    expect(r.tokens[0]).toBe(2048);
    expect(r.text).toBe('ok');
    const unknown = Grammar.compile('root ::= <no-such-token-here> "x"');
    await expect(context.generate('Say:', { grammar: unknown }).result).rejects.toThrow(grammarError({}));
  });

  it('rejects with GrammarError and the partial result when the grammar allows no token', async () => {
    // No token has this id: the grammar can match nothing.
    const nothing = context.generate('x', { grammar: 'root ::= <[99999]>' }).result;
    await expect(nothing).rejects.toThrow(grammarError({}));
    const e = await nothing.catch((error: unknown) => error as GrammarError & { result: { text: string; tokens: number[] } });
    expect(e.result.tokens).toEqual([]);
    // Complete after "ab", and end-of-generation does not end it: nothing is left to allow.
    const complete = context.generate('x', { grammar: 'root ::= "ab"', stopAtEog: false, temperature: 0, maxTokens: 20 }).result;
    const e2 = await complete.catch((error: unknown) => error as GrammarError & { result: { text: string } });
    expect(e2).toBeInstanceOf(GrammarError);
    expect(e2.result.text).toBe('ab');
    // The same on a parallel context, which goes on serving others.
    const p = parallel.generate('x', { grammar: 'root ::= "a" <[99999]>', temperature: 0 }).result;
    await expect(p).rejects.toThrow(grammarError({}));
    expect((await parallel.generate('x', { maxTokens: 3 }).result).tokens).toHaveLength(3);
  });

  it('fails fast, alone, when an ambiguous grammar would read the text in too many ways', async () => {
    // Every letter may close with "b", "c" or "d": after n letters, 3^n ways to read the text (stacks). Unbounded,
    // 4 tokens took 1 s and the 5th more than 100 s; the bound fails it within a few tokens.
    const ambiguous = Grammar.compile('root ::= e\ne ::= [a-z] e "b" | [a-z] e "c" | [a-z] e "d" | ""');
    const started = Date.now();
    const running = parallel.generate('x', { grammar: ambiguous, temperature: 1, seed: 1, maxTokens: 40 }).result;
    // Another slot is served meanwhile and ends normally.
    const other = parallel.generate('x', { maxTokens: 8, temperature: 0 }).result;
    const e = await running.catch((error: unknown) => error as GrammarError & { result: { tokens: number[] } });
    expect(e).toBeInstanceOf(GrammarError);
    expect(e.message).toMatch(/too ambiguous: reading the text so far in \d+ ways exceeds the limit of 1024/);
    expect(e.result.tokens.length).toBeLessThan(10);
    expect(Date.now() - started).toBeLessThan(20_000);
    expect((await other).tokens).toHaveLength(8);
    await expect(context.generate('x', { grammar: ambiguous, temperature: 1, seed: 1, maxTokens: 40 }).result).rejects.toThrow(/too ambiguous/);
    // Too many ways to start: 11 levels, each leaving "x" or "y" to read after the "z" at the bottom, start in
    // 2^11 ways; refused when compiled, naming the limit. 10 levels (1024 ways) are within it.
    const levels = (n: number) => ['root ::= l1', ...Array.from({ length: n }, (_, i) => `l${i + 1} ::= l${i + 2} "x" | l${i + 2} "y"`), `l${n + 1} ::= "z"`].join('\n');
    expect(() => Grammar.compile(levels(11))).toThrow(grammarError({ limit: 'stacks' }));
    expect(() => Grammar.compile(levels(11))).toThrow(/can start in 2048 ways, more than the limit of 1024/);
    expect(() => Grammar.compile(levels(10))).not.toThrow();
  });

  it.each([
    ['a syntax error', 'root ::= "a" @', { position: 13, line: 1, column: 14 }],
    ['an unterminated literal', 'root ::= "abc', { position: 13 }],
    ['a missing parenthesis', 'root ::= ( "a" ', { position: 15 }],
    ['an undefined rule', 'root ::= "a"\nitem ::= other', { position: 22, line: 2, column: 10, rule: 'other' }],
    ['a missing root', 'start ::= "a"', { position: 0, rule: 'root' }],
    ['left recursion', 'root ::= "x" expr\nexpr ::= expr "+" "1" | "1"', { position: 18, line: 2, column: 1, rule: 'expr' }],
    ['left recursion through an empty rule', 'root ::= e\ne ::= opt e "x" | "y"\nopt ::= "a"?', { rule: 'e' }],
    ['a bad escape', 'root ::= "\\q"', { position: 10 }],
    ['no rules at all', '  # only a comment', { position: 0 }],
    ['too many repetitions', 'root ::= "a"{2001}', {}],
    // llama.cpp would add rules without end (max - min wraps around as an unsigned number).
    ['a maximum below the minimum', 'root ::= "a"{100,50}', { position: 12 }],
    ['a maximum below the minimum, spaced out', 'root ::= ("a" {5 # five\n , 2 })', { position: 14 }],
  ])('reports %s with its position', (_, gbnf, details) => {
    expect(() => Grammar.compile(gbnf)).toThrow(grammarError(details));
  });

  it('bounds what reaches the recursive parser: nesting, size, rules, elements', () => {
    const deep = `root ::= ${'('.repeat(GRAMMAR_LIMITS.depth + 1)}"a"${')'.repeat(GRAMMAR_LIMITS.depth + 1)}`;
    expect(() => Grammar.compile(deep)).toThrow(grammarError({ limit: 'depth' }));
    // Nesting within the limit still parses.
    const ok = `root ::= ${'('.repeat(GRAMMAR_LIMITS.depth)}"a"${')'.repeat(GRAMMAR_LIMITS.depth)}`;
    expect(Grammar.compile(ok).gbnf).toBe(ok);
    // 100,000 parentheses would overflow a thread's stack in llama.cpp's parser.
    expect(() => Grammar.compile(`root ::= ${'('.repeat(100_000)}`)).toThrow(grammarError({ limit: 'depth' }));
    const huge = `root ::= "${'a'.repeat(10 * 1024 * 1024)}"`;
    expect(() => Grammar.compile(huge)).toThrow(grammarError({ limit: 'bytes' }));
    const manyRules = `root ::= ${Array.from({ length: 60 }, () => '("a"{0,2000})').join(' ')}`;
    expect(() => Grammar.compile(manyRules)).toThrow(grammarError({ limit: 'rules' }));
    const manyElements = `root ::= "${'abcd'.repeat(5000)}"{1000}`;
    expect(() => Grammar.compile(manyElements)).toThrow(grammarError({ limit: 'elements' }));
    // A long chain of rules, each starting with the next: the left-recursion check recurses along it.
    const chain = Array.from({ length: 20_000 }, (_, i) => `r${i} ::= r${i + 1} "x"`).join('\n');
    expect(Grammar.compile(`root ::= r0\n${chain}\nr20000 ::= "y"`).root).toBe('root');
    const loop = `${Array.from({ length: 20_000 }, (_, i) => `r${i} ::= r${i + 1} "x"`).join('\n')}\nr20000 ::= r0\nroot ::= r0`;
    expect(() => Grammar.compile(loop)).toThrow(grammarError({}));
  });

  it('survives random and mutated grammars: each one compiles or is a GrammarError', () => {
    const seeds = ['root ::= "a" | "b"', 'root ::= ("x" [0-9]{2,4})* item\nitem ::= [^"\\\\] | "\\u00e9"', 'root ::= !<[5]> <[6]>? .'];
    let compiled = 0;
    for (let i = 0; i < 400; i++) {
      let text: string;
      if (i % 2 === 0) {
        text = randomBytes(1 + (i % 64)).toString('latin1');
      } else {
        const base = Buffer.from(seeds[i % seeds.length]);
        for (let k = 0; k < 1 + (i % 5); k++) base[(i * 7 + k * 13) % base.length] = (i * 31 + k * 17) % 256;
        text = base.toString('latin1');
      }
      try {
        Grammar.compile(text);
        compiled++;
      } catch (error) {
        expect(error).toBeInstanceOf(GrammarError);
      }
    }
    expect(compiled).toBeGreaterThan(0);
  });
});

describe('JSON Schema', () => {
  const schemas: [string, object][] = [
    [
      'nested objects',
      {
        type: 'object',
        properties: {
          name: { type: 'string', maxLength: 12 },
          address: {
            type: 'object',
            properties: { city: { type: 'string', minLength: 1, maxLength: 10 }, zip: { type: 'integer', minimum: 10000, maximum: 99999 } },
            required: ['city', 'zip'],
            additionalProperties: false,
          },
        },
        required: ['name', 'address'],
        additionalProperties: false,
      },
    ],
    [
      'arrays with minItems and maxItems',
      {
        type: 'object',
        properties: {
          tags: { type: 'array', items: { type: 'string', maxLength: 6 }, minItems: 1, maxItems: 4 },
          scores: { type: 'array', items: { type: 'integer', minimum: -5, maximum: 5 }, minItems: 2, maxItems: 3 },
          pair: { type: 'array', prefixItems: [{ type: 'boolean' }, { type: 'null' }] },
        },
        required: ['tags', 'scores', 'pair'],
        additionalProperties: false,
      },
    ],
    [
      'enums and const',
      {
        type: 'object',
        properties: {
          color: { enum: ['red', 'green', 'blue'] },
          size: { type: 'string', enum: ['S', 'M', 'L'] },
          version: { const: 2 },
          level: { enum: [1, 2, 3, null] },
        },
        required: ['color', 'size', 'version', 'level'],
        additionalProperties: false,
      },
    ],
    [
      '$ref and $defs',
      {
        $defs: {
          point: { type: 'object', properties: { x: { type: 'integer', minimum: 0, maximum: 100 }, y: { type: 'integer', minimum: 0, maximum: 100 } }, required: ['x', 'y'], additionalProperties: false },
          label: { type: 'string', pattern: '^[A-Z][a-z]{1,5}$' },
        },
        type: 'object',
        properties: { from: { $ref: '#/$defs/point' }, to: { $ref: '#/$defs/point' }, label: { $ref: '#/$defs/label' } },
        required: ['from', 'to', 'label'],
        additionalProperties: false,
      },
    ],
    [
      'optional fields and anyOf',
      {
        type: 'object',
        properties: {
          id: { type: 'integer', minimum: 1, maximum: 999 },
          nickname: { type: 'string', maxLength: 8 },
          active: { type: 'boolean' },
          value: { anyOf: [{ type: 'integer', minimum: 0, maximum: 9 }, { type: 'string', maxLength: 3 }] },
        },
        required: ['id'],
        additionalProperties: false,
      },
    ],
  ];
  // strictTuples off: a prefixItems tuple without items: false is valid JSON Schema (llama.cpp's grammar gives exactly its items).
  const ajv = new Ajv2020({ strict: true, strictTuples: false });

  it.each(schemas)('200 seeded samples at temperature 1.5 under %s parse and validate', async (_, schema) => {
    const validate = ajv.compile(schema);
    const grammar = Grammar.fromJsonSchema(schema);
    const failures: string[] = [];
    for (let seed = 0; seed < 200; seed++) {
      // Every `space` of llama.cpp's JSON grammar allows up to 22 whitespace tokens, which temperature 1.5 takes:
      // these schemas bound the answer well under 1500 tokens.
      const r = await context.generate('JSON:', { grammar, temperature: 1.5, seed, maxTokens: 1500 }).result;
      let value: unknown;
      try {
        value = JSON.parse(r.text);
      } catch {
        failures.push(`seed ${seed} (${r.stopReason}): not JSON: ${r.text}`);
        continue;
      }
      if (!validate(value)) failures.push(`seed ${seed}: ${ajv.errorsText(validate.errors)}: ${r.text}`);
    }
    expect(failures).toEqual([]);
  }, 300_000);

  it('takes a schema per call through jsonSchema, on both kinds of context', async () => {
    const schema = { type: 'object', properties: { ok: { type: 'boolean' } }, required: ['ok'], additionalProperties: false };
    for (const r of [
      await context.generate('JSON:', { jsonSchema: schema, seed: 1, maxTokens: 100 }).result,
      await parallel.generate('JSON:', { jsonSchema: schema, seed: 1, maxTokens: 100 }).result,
    ]) {
      expect(typeof JSON.parse(r.text).ok).toBe('boolean');
    }
  });

  it.each([
    ['not', { not: { type: 'string' } }, 'not', '#/not'],
    ['multipleOf', { type: 'integer', multipleOf: 3 }, 'multipleOf', '#/multipleOf'],
    ['a number bound', { type: 'object', properties: { p: { type: 'number', minimum: 0 } } }, 'minimum', '#/properties/p/minimum'],
    ['uniqueItems', { type: 'array', items: { type: 'integer' }, uniqueItems: true }, 'uniqueItems', '#/uniqueItems'],
    ['patternProperties', { type: 'object', patternProperties: { '^x': {} } }, 'patternProperties', '#/patternProperties'],
    ['minProperties', { type: 'object', properties: { a: {} }, minProperties: 1 }, 'minProperties', '#/minProperties'],
    ['if/then/else', { if: { type: 'string' }, then: { maxLength: 2 } }, 'if', '#/if'],
    ['contains', { type: 'array', contains: { const: 1 } }, 'contains', '#/contains'],
    ['dependentRequired', { type: 'object', properties: { a: {} }, dependentRequired: { a: ['b'] } }, 'dependentRequired', '#/dependentRequired'],
    ['a remote $ref', { $ref: 'https://example.com/schema.json' }, '$ref', '#/$ref'],
    ['a keyword next to $ref', { $defs: { a: { type: 'string' } }, $ref: '#/$defs/a', maxLength: 3 }, 'maxLength', '#/maxLength'],
    ['an unknown format', { type: 'string', format: 'email' }, 'format', '#/format'],
    ['a pattern next to maxLength', { type: 'string', pattern: '^a+$', maxLength: 3 }, 'maxLength', '#/maxLength'],
    ['maxItems past 2000', { type: 'array', maxItems: 5000 }, 'maxItems', '#/maxItems'],
    ['a required name not in properties', { type: 'object', properties: { a: {} }, required: ['b'] }, 'required', '#/required'],
    ['an unanchored pattern', { type: 'string', pattern: 'abc' }, 'pattern', '#/pattern'],
    ['a bound ignored next to another', { type: 'integer', minimum: 1, exclusiveMinimum: 3 }, 'exclusiveMinimum', '#/exclusiveMinimum'],
    ['a typo', { type: 'object', properties: { a: { type: 'string', maxLenght: 3 } } }, 'maxLenght', '#/properties/a/maxLenght'],
    ['in a $def', { $defs: { d: { type: 'integer', multipleOf: 2 } }, $ref: '#/$defs/d' }, 'multipleOf', '#/$defs/d/multipleOf'],
    // The grammar fuzzer's finds: {999,9} made llama.cpp's parser add rules until memory ran out.
    ['minItems above maxItems', { type: 'array', items: { type: 'string' }, minItems: 1000, maxItems: 10 }, 'minItems', '#/minItems'],
    ['minLength above maxLength', { type: 'string', minLength: 5, maxLength: 2 }, 'minLength', '#/minLength'],
  ])('names the keyword and its path: %s', (_, schema, keyword, path) => {
    expect(() => Grammar.fromJsonSchema(schema)).toThrow(grammarError({ keyword, path }));
  });

  it('accepts annotations, recursive $ref, oneOf, allOf of objects and type lists', () => {
    const tree = {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      title: 'Tree', description: 'a node', $comment: 'c', examples: [{}], default: {},
      $defs: { node: { type: 'object', properties: { v: { type: 'integer' }, kids: { type: 'array', items: { $ref: '#/$defs/node' }, maxItems: 2 } }, required: ['v'] } },
      $ref: '#/$defs/node',
    };
    expect(Grammar.fromJsonSchema(tree).gbnf).toContain('root ::=');
    expect(Grammar.fromJsonSchema({ oneOf: [{ type: 'string', deprecated: true }, { type: 'integer', readOnly: true }] }).gbnf).toContain('|');
    expect(Grammar.fromJsonSchema({ allOf: [{ properties: { a: { type: 'string' } } }, { properties: { b: { type: 'integer' } } }] }).gbnf).toContain('b');
    expect(Grammar.fromJsonSchema({ type: ['string', 'null'], maxLength: 4 }).gbnf).toContain('null');
  });

  it('bounds the optional properties the converter takes cubic time over (the grammar fuzzer: 10,000 took minutes)', () => {
    const props = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, { type: 'integer' }]));
    const started = Date.now();
    expect(Grammar.fromJsonSchema({ type: 'object', properties: props(256) }).gbnf).toContain('k255');
    expect(() => Grammar.fromJsonSchema({ type: 'object', properties: props(10_000) })).toThrow(grammarError({ limit: 'properties', path: '#' }));
    // Required properties cost nothing extra; many objects of 256 optional ones add up to the same limit.
    expect(Grammar.fromJsonSchema({ type: 'object', properties: props(1000), required: Object.keys(props(1000)) }).gbnf).toContain('k999');
    const five = Object.fromEntries(Array.from({ length: 5 }, (_, j) => [`o${j}`, { type: 'object', properties: props(256) }]));
    expect(() => Grammar.fromJsonSchema({ type: 'object', properties: five, required: Object.keys(five) })).toThrow(grammarError({ limit: 'properties' }));
    expect(Date.now() - started).toBeLessThan(20_000); // minutes before the bound
  });

  it('bounds deep schemas and never crashes on odd ones', () => {
    let deep: object = { type: 'string' };
    for (let i = 0; i < 500; i++) deep = { type: 'array', items: deep };
    expect(() => Grammar.fromJsonSchema(deep)).toThrow(grammarError({ limit: 'depth' }));
    const cyclic: Record<string, unknown> = { type: 'object' };
    cyclic.properties = { self: cyclic };
    expect(() => Grammar.fromJsonSchema(cyclic)).toThrow(grammarError({ limit: 'depth' }));
    for (const odd of [{ $ref: '#/nowhere' }, { $ref: '#/$defs/a', $defs: { a: { $ref: '#/$defs/a' } } }, { enum: [] }, { type: 'float' }, { items: true }]) {
      expect(() => Grammar.fromJsonSchema(odd)).toThrow(GrammarError);
    }
  });
});

describe('logit bias', () => {
  it('-100 bans the token the greedy answer would take; +100 forces one', async () => {
    const prompt = 'The capital of France is';
    const greedy = await context.generate(prompt, { temperature: 0, maxTokens: 1 }).result;
    const first = greedy.tokens[0];
    const banned = await context.generate(prompt, { temperature: 0, maxTokens: 1, logitBias: { [first]: -100 } }).result;
    expect(banned.tokens[0]).not.toBe(first);
    const many = await context.generate(prompt, { temperature: 1.5, seed: 4, maxTokens: 30, logitBias: new Map([[first, -100]]) }).result;
    expect(many.tokens).not.toContain(first);
    const forced = await context.generate(prompt, { temperature: 0, maxTokens: 3, logitBias: { 1010: 100 } }).result;
    expect(forced.tokens).toEqual([1010, 1010, 1010]);
    const p = await parallel.generate(prompt, { temperature: 0, maxTokens: 1, logitBias: { [first]: -100 } }).result;
    expect(p.tokens).toEqual(banned.tokens);
  });
});
