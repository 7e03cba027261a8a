// The pure-TS halves of constrained output: the GBNF pre-scan that bounds what reaches llama.cpp's recursive
// parser, and the JSON Schema walker that refuses what llama.cpp's converter would drop (no addon here).
import { describe, expect, it } from 'vitest';
import { GRAMMAR_LIMITS, scanGbnf } from '../../dist/grammar.js';
import { checkJsonSchema, JSON_SCHEMA_MAX_DEPTH, patternsOf } from '../../dist/json-schema.js';

const scan = (text: string) => scanGbnf(Buffer.from(text, 'utf8'));
const limit = (name: string) => expect.objectContaining({ name: 'GrammarError', limit: name });

describe('scanGbnf', () => {
  it('counts nesting as llama.cpp parses it: parentheses in literals, classes, tokens and comments do not nest', () => {
    const inert = `root ::= "${'('.repeat(400)}" [${'('.repeat(400)}] <${'('.repeat(400)}> # ${'('.repeat(400)}\n`;
    expect(() => scan(inert)).not.toThrow();
    expect(() => scan(`root ::= ${'('.repeat(GRAMMAR_LIMITS.depth + 1)}`)).toThrow(limit('depth'));
    // A UTF-8 lead byte takes its continuation bytes with it, as in llama.cpp's decode_utf8: the quote after
    // an escaped one does not end the literal.
    expect(() => scan(`root ::= "\\"${'('.repeat(300)}"`)).not.toThrow();
  });

  it('refuses text, rules and elements past the limits, with the byte position', () => {
    expect(() => scan('x'.repeat(GRAMMAR_LIMITS.bytes + 1))).toThrow(limit('bytes'));
    expect(() => scan(`root ::= ${'("a"{0,2000}) '.repeat(60)}`)).toThrow(limit('rules'));
    expect(() => scan(`root ::= "${'a'.repeat(3000)}"{1000}`)).toThrow(limit('elements'));
    expect(() => scan('root ::= "a"\0')).toThrow(expect.objectContaining({ name: 'GrammarError', position: 12 }));
  });

  it('replaces tokens named by their text with `.` of the same length, and records rule names', () => {
    const text = 'root ::= <|tool|> !<|x|> <[12]> item\nitem ::= "a"';
    const s = scan(text);
    expect(s.tokenNames).toBe(true);
    expect(s.validation.toString()).toBe(`root ::= .${' '.repeat(7)} .${' '.repeat(5)} <[12]> item\nitem ::= "a"`);
    expect(s.validation.length).toBe(Buffer.byteLength(text));
    expect(s.definitions.get('item')).toBe(text.indexOf('item ::='));
    expect(s.references.get('item')).toBe(text.indexOf('item'));
    expect(scan('root ::= <[1]>').tokenNames).toBe(false);
  });
});

describe('checkJsonSchema', () => {
  const refused = (schema: object, keyword: string, path: string) =>
    expect(() => checkJsonSchema(schema)).toThrow(expect.objectContaining({ name: 'GrammarError', keyword, path }));

  it('accepts what the converter honours, and annotations', () => {
    for (const schema of [
      { type: 'object', title: 't', properties: { a: { type: 'integer', minimum: 0, maximum: 9 } }, required: ['a'], additionalProperties: false },
      { type: 'array', items: { enum: ['x', 'y'] }, minItems: 1, maxItems: 2000 },
      { type: 'string', format: 'date-time' },
      { anyOf: [{ type: 'null' }, { $ref: '#/$defs/s' }], $defs: { s: { type: 'string', pattern: '^a+$' } } },
      { type: ['string', 'null'], minLength: 2 },
      { allOf: [{ properties: { a: { type: 'string' } } }, { $ref: '#/$defs/b' }], $defs: { b: { type: 'object', properties: { b: {} } } } },
      { type: 'integer', exclusiveMinimum: 0 },
      {},
    ]) {
      expect(() => checkJsonSchema(schema)).not.toThrow();
    }
  });

  it('names each keyword it would drop, with its JSON Pointer', () => {
    refused({ type: 'object', properties: { 'a/b': { type: 'number', maximum: 3 } } }, 'maximum', '#/properties/a~1b/maximum');
    refused({ minimum: 3 }, 'minimum', '#/minimum');
    refused({ type: 'array', prefixItems: [{}], maxItems: 2 }, 'maxItems', '#/maxItems');
    refused({ type: 'array', prefixItems: [{}], items: {} }, 'items', '#/items');
    refused({ oneOf: [{}], type: 'object' }, 'type', '#/type');
    refused({ type: 'string', enum: ['a'], maxLength: 3 }, 'maxLength', '#/maxLength');
    refused({ allOf: [{ properties: { a: {} }, additionalProperties: false }] }, 'additionalProperties', '#/allOf/0/additionalProperties');
    refused({ type: 'object', properties: { a: {} }, allOf: [{}] }, 'allOf', '#/allOf');
    refused({ $ref: '#/$defs/x~1y', $defs: {} }, '$ref', '#/$ref');
    refused({ type: 'integer', maximum: 2 ** 60 }, 'maximum', '#/maximum');
    refused({ type: 'object', properties: { a: true } }, 'a', '#/properties/a');
  });

  it('bounds the depth, cycles included', () => {
    let deep: object = {};
    for (let i = 0; i <= JSON_SCHEMA_MAX_DEPTH; i++) deep = { type: 'array', items: deep };
    expect(() => checkJsonSchema(deep)).toThrow(expect.objectContaining({ name: 'GrammarError', limit: 'depth' }));
    const cycle: Record<string, unknown> = { type: 'object' };
    cycle.properties = { again: cycle };
    expect(() => checkJsonSchema(cycle)).toThrow(expect.objectContaining({ limit: 'depth' }));
  });

  it('lists every pattern with its path', () => {
    expect(patternsOf({ properties: { a: { pattern: '^x$' } }, $defs: { b: { pattern: 'y' } } })).toEqual([
      { pattern: '^x$', path: '#/properties/a/pattern' },
      { pattern: 'y', path: '#/$defs/b/pattern' },
    ]);
  });
});
