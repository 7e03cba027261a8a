// Fuzz target "grammar": GBNF grammars and JSON schemas, random and mutated (llama.cpp's own example grammars,
// grammars built here, a few real-world schemas), compiled with Grammar.compile / Grammar.fromJsonSchema; one case
// in ten also generates a few tokens under the compiled grammar on the demo model.
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { demoModelPath, Grammar, GrammarError, loadModel } from '../../../dist/index.js';
import { prng } from '../mutate.mjs';
import { clean, unexpected } from '../outcome.mjs';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

export const title = 'grammars and JSON schemas: GBNF and schemas random and mutated, compiled, one in ten generating';

export const description = `Each case is a GBNF grammar (two cases in three) or a JSON Schema, seeded. Grammars are
llama.cpp's example grammars (\`vendor/llama.cpp/grammars/*.gbnf\`) and grammars built here, mutated (spans deleted,
repeated, swapped or cut short, GBNF syntax and odd escapes inserted, rules renamed or dropped), or built whole:
random rules of nested groups, classes, literals and token references, nesting 10 to 100,000 levels deep (and
unbalanced), ambiguous grammars whose ways of reading the text multiply (always generated), direct, indirect and hidden left recursion, undefined rules and roots, repetitions \`{n,m}\` up to
2^64 (and nested ones that multiply), escapes \`\\x\`/\`\\u\`/\`\\U\` cut short or out of range, lone surrogates,
invalid UTF-8 read from a file as the CLI reads it, NUL. Schemas are a few real-world ones mutated (nodes replaced,
keys dropped, unsupported keywords added, subtrees nested) or built whole: \`$ref\` cycles (self, mutual, through
\`$defs\`, dangling, remote), nesting up to 10,000 levels, unsupported keywords, enums up to 100,000 values,
boundary and inverted \`minItems\`/\`maxItems\`/\`minLength\`/\`maxLength\`/\`minimum\`, regex patterns, formats, and
roots that are not schemas. Each is compiled (\`Grammar.compile\`, with a custom root one time in ten, or
\`Grammar.fromJsonSchema\`); one case in ten then generates up to 12 tokens on the demo model at temperature 1
under the compiled grammar (and a schema's text, when the grammar completed, must parse as JSON). Clean outcomes:
compiled (and generated, or a generation refused by a \`GrammarError\` when the grammar allows no token of the
vocabulary), a \`GrammarError\` (by reason), or a \`TypeError\`/\`RangeError\` for an argument that is not a grammar.`;

export const classes = {
  compiled: 'a `Grammar`',
  'compiled, generated': 'a `Grammar`; a generation under it yields text the grammar allows',
  'compiled, generation refused: GrammarError': 'a `Grammar`; a generation under it rejects with `GrammarError` (no token of the vocabulary fits), carrying the result so far',
  'compiled, generation refused: GrammarError too ambiguous': 'a `Grammar`; a generation under it rejects with `GrammarError` when the text can be read in more ways than the stack bound (1024, patch 0004), carrying the result so far',
  'rejected: GrammarError limit stacks': '`GrammarError`: the grammar can start in more ways than the stack bound (1024)',
  'rejected: GrammarError syntax': '`GrammarError` with the byte `position` (`line`, `column`) where the GBNF stops parsing; NUL bytes',
  'rejected: GrammarError undefined rule': '`GrammarError` naming the `rule` referenced but never defined',
  'rejected: GrammarError no root': '`GrammarError`: no rule named as the root',
  'rejected: GrammarError left recursion': '`GrammarError` naming the left-recursive `rule`',
  'rejected: GrammarError limit bytes': '`GrammarError`: the text is longer than `GRAMMAR_LIMITS.bytes`',
  'rejected: GrammarError limit depth': '`GrammarError`: parentheses nest deeper than `GRAMMAR_LIMITS.depth`',
  'rejected: GrammarError limit rules': '`GrammarError`: repetitions expand to more rules than `GRAMMAR_LIMITS.rules`',
  'rejected: GrammarError limit elements': '`GrammarError`: repetitions expand to more elements than `GRAMMAR_LIMITS.elements`',
  'rejected: GrammarError schema keyword': '`GrammarError` naming the schema `keyword` the converter would ignore or cannot honour, and its `path`',
  'rejected: GrammarError schema limit depth': '`GrammarError`: the schema nests deeper than the converter may recurse',
  'rejected: GrammarError schema limit properties': '`GrammarError`: an object has more optional properties than the converter handles in reasonable time (`JSON_SCHEMA_MAX_OPTIONAL_PROPERTIES`, its time is cubic in them), or the schema\'s objects have too many in all',
  'rejected: GrammarError schema limit bytes': "`GrammarError`: the schema's grammar is longer than `GRAMMAR_LIMITS.bytes` (a huge enum)",
  'rejected: GrammarError schema': "`GrammarError`: llama.cpp's converter cannot convert the schema (a dangling or remote `$ref`, ...)",
  'rejected: TypeError': 'an argument error (`ERR_INVALID_ARG_TYPE`): a schema that is not an object',
  'rejected: RangeError': 'an argument error (`ERR_OUT_OF_RANGE`): a root that is not a rule name',
};

// Grammars of our own, beside llama.cpp's examples: Huozi's token names, token ids, every element kind.
const OWN = [
  'root ::= "<|beginofutterance|>" [^<]* "<|endofutterance|>"',
  'root ::= <|beginofutterance|> "助手\\n" [一-龥]{1,8} <|endofutterance|>',
  'root ::= (<[42]> | !<[7]>)+',
  'root ::= "yes" | "no" | "maybe"',
  'root ::= item ("," ws item){0,4}\nitem ::= [a-z]+ | "\\"" ([^"\\\\] | "\\\\" .)* "\\""\nws ::= [ \\t\\n]*',
  'root ::= "床前明月光，" [\\u4e00-\\u9fff]{5} "。"',
  'root ::= [\\x00-\\x7F\\U0001F600-\\U0001F64F]{2,3} .? "\\r\\n"',
  '# comment only line\nroot ::= a | b\na ::= "a"{0,} b?\nb ::= ("b" | [^b]){,3}',
];

/** The GBNF fragments, escapes and numbers mutations insert. */
const DICT = [
  '(', ')', '((', '))', '*', '+', '?', '|', '{', '}', '{0,}', '{,5}', '{3}', '{2,1}', '{4294967296}', '{18446744073709551617}',
  '{99999999999999999999999}', '{1000000,}', '{-1}', '[', ']', '[^', '[]', '[^]', '^', '-', '.', '"', '""', '"\\"', '\\', '\\x', '\\xZ', '\\x4',
  '\\u12', '\\uD800', '\\U00110000', '\\UFFFFFFFF', '\\q', '\\n', '\\\\', '::=', ' ::= ', '::', '#', '\n', '\r', '\t', 'root', 'root ::= ',
  'undefined-rule', 'a', '<', '>', '<|', '|>', '<|endofutterance|>', '<|no-such-token|>', '<[', '<[0]>', '<[-1]>', '<[99999999]>', '!<[1]>', '!', '中',
  '\u{1F600}', '\uD800', '\uDFFF', '\uFFFF',
];

const BIG = ['0', '1', '2', '255', '256', '1000', '65535', '65536', '100000', '1000000', '2147483647', '2147483648', '4294967295', '4294967296',
  '9007199254740993', '18446744073709551615', '18446744073709551616', '99999999999999999999999999'];
const DEPTHS = [10, 100, 200, 255, 256, 257, 1000, 10000, 100000];

export async function setup(workDir) {
  const dir = join(root, 'vendor', 'llama.cpp', 'grammars');
  // The pinned tree is there wherever the addon was built (scripts/vendor-llama.mjs); without it, our own grammars.
  const examples = existsSync(dir)
    ? readdirSync(dir).filter((f) => f.endsWith('.gbnf')).sort().map((f) => readFileSync(join(dir, f), 'utf8'))
    : [];
  return { workDir, grammars: [...examples, ...OWN] };
}

const pickOf = (rand) => (a) => a[Math.floor(rand() * a.length)];

function literalText(rand) {
  const pick = pickOf(rand);
  let s = '';
  const n = Math.floor(rand() * 6);
  for (let i = 0; i < n; i++) s += pick(['a', 'b', ' ', '{', '"', '中', '\\n', '\\t', '\\"', '\\\\', '\\x41', '\\u4e2d', '\\U0001F600', 'é', '<', '|']);
  return s;
}

function classText(rand) {
  const pick = pickOf(rand);
  const parts = [];
  const n = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < n; i++) parts.push(pick(['a-z', '0-9', 'A-Z', '\\]', '\\-', '-', '^', '一-龥', '\\x00-\\x1F', '\\u0000-\\uFFFF', ' ', '\\n', 'z-a']));
  return `[${rand() < 0.3 ? '^' : ''}${parts.join('')}]`;
}

/** A random GBNF expression over `names` (at most `depth` levels of groups). */
function expression(rand, names, depth) {
  const pick = pickOf(rand);
  const alternatives = [];
  const na = 1 + Math.floor(rand() * 3);
  for (let a = 0; a < na; a++) {
    const seq = [];
    const ns = 1 + Math.floor(rand() * 4);
    for (let s = 0; s < ns; s++) {
      const r = rand();
      let el;
      if (r < 0.3) el = `"${literalText(rand)}"`;
      else if (r < 0.45) el = classText(rand);
      else if (r < 0.6) el = pick(names);
      else if (r < 0.65) el = '.';
      else if (r < 0.7) el = pick(['<|endofutterance|>', '<[13]>', '!<[2]>', '<|im_end|>']);
      else if (r < 0.85 && depth > 0) el = `(${expression(rand, names, depth - 1)})`;
      else el = `"${literalText(rand)}"`;
      const q = rand();
      if (q < 0.1) el += '*';
      else if (q < 0.2) el += '+';
      else if (q < 0.3) el += '?';
      else if (q < 0.4) el += pick(['{0}', '{1}', '{3}', '{0,3}', '{2,}', '{,4}', '{1,2}']);
      seq.push(el);
    }
    alternatives.push(seq.join(' '));
  }
  return alternatives.join(rand() < 0.5 ? ' | ' : '\n  | ');
}

/** A grammar built whole, of one of the kinds the description lists. */
function builtGrammar(rand, kinds) {
  const pick = pickOf(rand);
  const kind = Math.floor(rand() * 10);
  switch (kind) {
    case 8: {
      // Ambiguous: many ways to read the same text, the stacks llama.cpp keeps multiply (patch 0004 bounds them).
      const k = 2 + Math.floor(rand() * 4);
      const x = pick(['[a-z]', '.', '[^"]', '"a"', '[a-z]+', '[0-9a-z]?']);
      const levels = 6 + Math.floor(rand() * 10);
      kinds.push('ambiguous');
      return pick([
        `root ::= e\ne ::= ${Array.from({ length: k }, (_, i) => `${x} e "${'bcdef'[i]}"`).join(' | ')} | ""`,
        ['root ::= l1', ...Array.from({ length: levels }, (_, i) => `l${i + 1} ::= l${i + 2} "x" | l${i + 2} "y"`), `l${levels + 1} ::= ${x}+`].join('\n'),
        `root ::= (a | b | c)+\na ::= ${x}\nb ::= ${x}{1,3}\nc ::= ${x}* " "?`,
        `root ::= (${x}+)+ (${x}*)*`,
        `root ::= t\nt ::= "(" t ")" t | ${x} t | ${x} | ""`,
      ]);
    }
    case 0: {
      const depth = pick(DEPTHS);
      const balanced = rand() < 0.8;
      kinds.push(`nesting ${depth}${balanced ? '' : ' unbalanced'}`);
      const open = pick(['(', '("a" | (', '"x" (']);
      const close = open === '(' ? ')' : '))';
      return `root ::= ${open.repeat(depth)}"x"${close.repeat(balanced ? depth : depth - 1)}`;
    }
    case 1: {
      kinds.push('left recursion');
      return pick([
        'root ::= root "a" | "b"',
        'root ::= a "x"\na ::= root "y" | "z"',
        'root ::= "a"? root "b" | "c"',
        'root ::= a root\na ::= "x"*',
        'root ::= (root | "a") "b"',
        'root ::= a\na ::= b\nb ::= c "!"\nc ::= a | "c"',
        'root ::= "ok"\nother ::= other "x"',
        'root ::= ("a"{0,3} root)? "b"',
      ]);
    }
    case 2: {
      kinds.push('undefined rule');
      return pick(['root ::= missing', 'root ::= "a" | b\nc ::= "c"', 'rot ::= "a"', 'root ::= a\na ::= undefined-rule*', 'root ::= root-x', '']);
    }
    case 3: {
      const n = pick(BIG);
      const m = pick(BIG);
      const form = pick([`{${n}}`, `{${n},}`, `{,${m}}`, `{${n},${m}}`]);
      const nested = rand() < 0.4;
      kinds.push(`repetition ${form}${nested ? ' nested' : ''}`);
      return nested ? `root ::= ("a" "b"${form}){${pick(['2', '100', '1000', n])}}` : `root ::= ${pick(['"a"', '[a-z]', '.', 'x', '("a" | "b")'])}${form}\nx ::= "x"`;
    }
    case 4: {
      kinds.push('odd escape');
      const esc = pick(['\\x', '\\xZZ', '\\x4', '\\u12', '\\u', '\\U0010FFFF', '\\U00110000', '\\UFFFFFFFF', '\\q', '\\', '\\\\', '\\"', '\\0', '\\uD800', '\\uDFFF']);
      return pick([`root ::= "${esc}"`, `root ::= [${esc}]`, `root ::= [a-${esc}]`, `root ::= "a${esc}b" [${esc}-z]`, `root ::= "${esc}`]);
    }
    case 5: {
      kinds.push('NUL');
      return pick(['root ::= "a\0b"', 'root ::= "a"\0', '\0', 'root ::= [\0-\x7f]', 'root ::= "\\x00"']);
    }
    case 6: {
      kinds.push('lone surrogate');
      return pick(['root ::= "\uD800"', 'root ::= [\uDC00-\uDFFF]', 'root\uD83D ::= "a"', 'root ::= "\uDE00\uD83D"']);
    }
    case 9:
    default: {
      const names = ['root', 'a', 'b', 'expr', 'ws', 'x-y', 'r1'].slice(0, 1 + Math.floor(rand() * 7));
      kinds.push(`random ${names.length} rules`);
      // Rules refer only to later ones (or to themselves not at their start) most of the time: many compile.
      return names.map((n, i) => `${n} ::= ${expression(rand, rand() < 0.8 ? names.slice(i + 1).concat(['"z"']) : names, 3)}`).join('\n');
    }
  }
}

/** One to four mutations of a grammar's text. */
function mutateText(rand, text, kinds) {
  const pick = pickOf(rand);
  const at = () => Math.floor(rand() * (text.length + 1));
  const count = 1 + Math.floor(rand() * 4);
  for (let i = 0; i < count; i++) {
    const r = Math.floor(rand() * 9);
    const a = at();
    const b = Math.min(text.length, a + Math.floor(rand() * 24));
    if (r === 0) {
      text = text.slice(0, a) + text.slice(b);
      kinds.push('delete');
    } else if (r === 1) {
      // Past GRAMMAR_LIMITS.bytes (1 MiB) some of the time, never past 4 MiB: writing 20 MB cases costs the run time.
      const times = text.length > 1 << 20 ? 2 : pick([2, 3, 16, 1000]);
      text = text.slice(0, b) + text.slice(a, b).repeat(times - 1) + text.slice(b);
      kinds.push(`repeat ×${times}`);
    } else if (r === 2 || r === 3) {
      const t = pick(DICT);
      text = text.slice(0, a) + t + text.slice(a);
      kinds.push(`insert ${JSON.stringify(t)}`);
    } else if (r === 4) {
      text = text.slice(0, a);
      kinds.push('cut short');
    } else if (r === 5) {
      const c = at();
      const d = Math.min(text.length, c + Math.floor(rand() * 24));
      if (b <= c) text = text.slice(0, a) + text.slice(c, d) + text.slice(b, c) + text.slice(a, b) + text.slice(d);
      kinds.push('swap');
    } else if (r === 6) {
      // Rename one rule everywhere, or only where it is defined (its uses become undefined).
      const names = [...new Set([...text.matchAll(/^([a-zA-Z0-9-]+)\s*::=/gm)].map((m) => m[1]))];
      if (names.length) {
        const from = pick(names);
        const to = pick(['root', 'renamed', 'a', '']);
        text = rand() < 0.5 ? text.replace(new RegExp(`\\b${from}\\b`, 'g'), to) : text.replace(new RegExp(`^${from}(\\s*::=)`, 'm'), `${to}$1`);
        kinds.push(`rename ${from}`);
      }
    } else if (r === 7) {
      const n = pick(BIG);
      text = text.replace(/\d+/, n);
      kinds.push(`number ${n}`);
    } else {
      const lines = text.split('\n');
      lines.splice(Math.floor(rand() * lines.length), 1);
      text = lines.join('\n');
      kinds.push('drop a line');
    }
  }
  return text;
}

// Real-world schemas that mutations start from.
const SCHEMAS = [
  { type: 'object', properties: { name: { type: 'string' }, age: { type: 'integer', minimum: 0, maximum: 150 }, email: { type: 'string', format: 'email' } }, required: ['name'] },
  { type: 'object', properties: { items: { type: 'array', items: { type: 'object', properties: { sku: { type: 'string', pattern: '^[A-Z]{3}-\\d{4}$' }, qty: { type: 'integer' } }, required: ['sku', 'qty'] }, minItems: 1, maxItems: 5 }, total: { type: 'number' } }, required: ['items'], additionalProperties: false },
  { type: 'object', properties: { status: { enum: ['ok', 'error', 'pending', null, 3] }, code: { const: 200 }, when: { type: 'string', format: 'date-time' } } },
  { $defs: { node: { type: 'object', properties: { value: { type: 'integer' }, children: { type: 'array', items: { $ref: '#/$defs/node' } } }, required: ['value'] } }, $ref: '#/$defs/node' },
  { type: 'object', properties: { tool: { type: 'string', enum: ['search', 'calc'] }, arguments: { anyOf: [{ type: 'object', properties: { query: { type: 'string', minLength: 1, maxLength: 64 } } }, { type: 'object', properties: { expr: { type: 'string' } } }] } }, required: ['tool', 'arguments'] },
  { type: 'array', items: { oneOf: [{ type: 'string' }, { type: 'number' }, { type: 'boolean' }, { type: 'null' }] }, maxItems: 3 },
  { type: 'string', enum: ['红', '绿', '蓝'] },
  { type: 'object', patternProperties: { '^x-': { type: 'string' } }, properties: { id: { type: 'string', format: 'uuid' } } },
];

const UNSUPPORTED = ['not', 'if', 'then', 'else', 'dependentRequired', 'dependentSchemas', 'propertyNames', 'contains', 'minContains', 'uniqueItems',
  'unevaluatedProperties', 'unevaluatedItems', '$dynamicRef', '$recursiveRef', 'multipleOf', 'contentEncoding', 'allOf', 'patternProperties', 'prefixItems',
  'additionalItems', 'minProperties', 'maxProperties', 'exclusiveMinimum', 'format', 'no-such-keyword'];
const TYPES = ['object', 'array', 'string', 'number', 'integer', 'boolean', 'null'];
const SIZES = [-1, 0, 1, 2, 3, 10, 100, 255, 256, 1000, 65536, 1e6, 2 ** 31, 2 ** 32, 2 ** 53, 1.5, 1e308];
const PATTERNS = ['^[a-z]+$', '^\\d{3}-\\d{4}$', '(a|b)*c', '[', '(', 'a{2,1}', 'a{1000000}', '(?=x)y', '(a)\\1', '^(?:[0-9a-f]{2}){16}$', '\\p{L}+', '.*', '^$', '[^\\x00-\\x1f]+', '((((((((((a))))))))))'];
const FORMATS = ['date', 'time', 'date-time', 'uuid', 'email', 'uri', 'ipv4', 'no-such-format'];

/** A random schema of at most `depth` levels. */
function randomSchema(rand, depth) {
  const pick = pickOf(rand);
  const r = rand();
  if (depth <= 0 || r < 0.25) {
    const type = pick(TYPES);
    const s = { type };
    if (type === 'string') {
      if (rand() < 0.3) s.minLength = pick(SIZES);
      if (rand() < 0.3) s.maxLength = pick(SIZES);
      if (rand() < 0.2) s.pattern = pick(PATTERNS);
      if (rand() < 0.2) s.format = pick(FORMATS);
    }
    if (type === 'integer' || type === 'number') {
      if (rand() < 0.3) s.minimum = pick([...SIZES, -(2 ** 53), -1e308]);
      if (rand() < 0.3) s.maximum = pick(SIZES);
      if (rand() < 0.1) s.exclusiveMaximum = pick(SIZES);
    }
    if (rand() < 0.1) s.type = pick([['string', 'null'], 'no-such-type', 5, [], ['integer', 'boolean', 'object']]);
    return s;
  }
  if (r < 0.45) {
    const props = {};
    const n = Math.floor(rand() * 4);
    for (let i = 0; i < n; i++) props[pick(['a', 'b', 'name', '', '中文', 'with "quote"', 'x\\y', '$ref', 'type', `p${i}`])] = randomSchema(rand, depth - 1);
    const s = { type: 'object', properties: props };
    if (rand() < 0.5) s.required = Object.keys(props).filter(() => rand() < 0.5).concat(rand() < 0.1 ? ['not-a-property'] : []);
    if (rand() < 0.3) s.additionalProperties = rand() < 0.5 ? rand() < 0.5 : randomSchema(rand, depth - 1);
    return s;
  }
  if (r < 0.6) {
    const s = { type: 'array', items: randomSchema(rand, depth - 1) };
    if (rand() < 0.4) s.minItems = pick(SIZES);
    if (rand() < 0.4) s.maxItems = pick(SIZES);
    return s;
  }
  if (r < 0.7) return { [pick(['anyOf', 'oneOf', 'allOf'])]: Array.from({ length: Math.floor(rand() * 4) }, () => randomSchema(rand, depth - 1)) };
  if (r < 0.8) return { enum: Array.from({ length: 1 + Math.floor(rand() * 5) }, () => pick(['a', 1, 2.5, null, true, { k: 'v' }, [1], '中', ''])) };
  if (r < 0.85) return { const: pick(['x', 0, null, false, { a: [1, { b: 2 }] }, '"\\\n']) };
  if (r < 0.9) return { $ref: pick(['#', '#/$defs/a', '#/properties/x', 'https://example.com/s.json', '#/$defs/~0~1', 'other.json#/a', '']) };
  const s = randomSchema(rand, depth - 1);
  if (typeof s === 'object' && s) s[pick(UNSUPPORTED)] = pick([true, 1, 'x', { type: 'string' }, ['a']]);
  return s;
}

/** Replaces a random node of `schema` (a plain JSON value) by what `f` makes of it. */
function atRandomNode(rand, value, f) {
  const nodes = [];
  const walk = (v, parent, key, depth) => {
    nodes.push({ parent, key, v });
    if (depth > 20 || v === null || typeof v !== 'object') return;
    for (const k of Object.keys(v)) walk(v[k], v, k, depth + 1);
  };
  walk(value, null, null, 0);
  const n = nodes[Math.floor(rand() * nodes.length)];
  const replaced = f(n.v, n.parent, n.key);
  if (n.parent === null) return replaced;
  n.parent[n.key] = replaced;
  return value;
}

function mutateSchema(rand, schema, kinds) {
  const pick = pickOf(rand);
  const count = 1 + Math.floor(rand() * 3);
  for (let i = 0; i < count; i++) {
    const r = Math.floor(rand() * 5);
    if (r === 0) {
      schema = atRandomNode(rand, schema, () => pick([null, 0, -1, 'x', true, false, [], {}, { type: 'string' }, 1e308, { $ref: '#' }]));
      kinds.push('replace a node');
    } else if (r === 1) {
      schema = atRandomNode(rand, schema, (v, parent, key) => {
        if (parent && !Array.isArray(parent)) delete parent[key];
        return parent && !Array.isArray(parent) ? undefined : v;
      });
      kinds.push('drop a key');
    } else if (r === 2) {
      const kw = pick(UNSUPPORTED);
      schema = atRandomNode(rand, schema, (v) => (v && typeof v === 'object' && !Array.isArray(v) ? { ...v, [kw]: pick([true, { type: 'string' }, ['a'], 2]) } : v));
      kinds.push(`add ${kw}`);
    } else if (r === 3) {
      schema = atRandomNode(rand, schema, (v) => ({ type: 'array', items: { type: 'object', properties: { n: v } } }));
      kinds.push('nest');
    } else {
      schema = atRandomNode(rand, schema, () => randomSchema(rand, 2));
      kinds.push('replace by a random schema');
    }
  }
  return schema;
}

/** A schema built whole, as JSON text (deep nesting is written as text: JSON.stringify would recurse). */
function builtSchema(rand, kinds) {
  const pick = pickOf(rand);
  const kind = Math.floor(rand() * 7);
  if (kind === 0) {
    kinds.push('$ref cycle');
    return JSON.stringify(pick([
      { $ref: '#' },
      { $defs: { a: { $ref: '#/$defs/b' }, b: { $ref: '#/$defs/a' } }, $ref: '#/$defs/a' },
      { $defs: { a: { $ref: '#/$defs/a' } }, type: 'object', properties: { x: { $ref: '#/$defs/a' } } },
      { type: 'object', properties: { self: { $ref: '#' } }, required: ['self'] },
      { definitions: { a: { type: 'array', items: { $ref: '#/definitions/a' }, minItems: 1 } }, $ref: '#/definitions/a' },
      { $defs: { a: { anyOf: [{ $ref: '#/$defs/b' }, { type: 'null' }] }, b: { allOf: [{ $ref: '#/$defs/a' }] } }, $ref: '#/$defs/a' },
      { $ref: '#/$defs/missing' },
      { $ref: 'https://example.com/schema.json' },
      { $ref: '#/properties/a', properties: { a: { $ref: '#/properties/b' }, b: { $ref: '#/properties/a' } } },
    ]));
  }
  if (kind === 1) {
    const depth = pick(DEPTHS.filter((d) => d <= 10000));
    const shape = pick(['object', 'array', 'anyOf']);
    kinds.push(`nesting ${depth} ${shape}`);
    const [open, close] = {
      object: ['{"type":"object","properties":{"a":', '},"required":["a"]}'],
      array: ['{"type":"array","items":', '}'],
      anyOf: ['{"anyOf":[{"type":"null"},', ']}'],
    }[shape];
    return `${open.repeat(depth)}{"type":"string"}${close.repeat(depth)}`;
  }
  if (kind === 2) {
    const n = pick([100, 1000, 10000, 100000]);
    const of = pick(['strings', 'numbers', 'mixed', 'long strings']);
    kinds.push(`enum of ${n} ${of}`);
    const values = Array.from({ length: n }, (_, i) =>
      of === 'strings' ? `v${i}` : of === 'numbers' ? i * 1.5 : of === 'long strings' ? `${'长'.repeat(16)}${i}` : [i, `s${i}`, null, { i }][i % 4]);
    return JSON.stringify({ type: 'object', properties: { e: { enum: values } } });
  }
  if (kind === 3) {
    const kw = pick(UNSUPPORTED);
    kinds.push(`unsupported ${kw}`);
    return JSON.stringify({ type: 'object', properties: { a: { type: 'string', [kw]: pick([true, { type: 'string' }, ['a'], 2]) } } });
  }
  if (kind === 4) {
    kinds.push('not a schema');
    return pick(['true', 'false', 'null', '42', '"string"', '[]', '[{"type":"string"}]', '{}', '{"type":{}}', '{"properties":[]}', '{"required":"a"}', '{"items":[]}']);
  }
  if (kind === 5) {
    const n = pick([100, 1000, 10000]);
    kinds.push(`${n} properties`);
    const properties = Object.fromEntries(Array.from({ length: n }, (_, i) => [`p${i}`, { type: pick(TYPES.slice(1)) }]));
    return JSON.stringify({ type: 'object', properties, required: Object.keys(properties).filter(() => rand() < 0.5) });
  }
  kinds.push('random');
  return JSON.stringify(randomSchema(rand, 1 + Math.floor(rand() * 5)));
}

export function makeCase(state, seed, index) {
  const rand = prng(seed ^ 0x68e31da4);
  const pick = pickOf(rand);
  const kinds = [];
  const spec = { generate: index % 10 === 0, seed: seed >>> 0 };
  if (rand() < 2 / 3) {
    spec.kind = 'gbnf';
    let text;
    if (rand() < 0.5) {
      kinds.push('mutated');
      text = mutateText(rand, pick(state.grammars), kinds);
    } else {
      kinds.push('built');
      text = builtGrammar(rand, kinds);
      if (rand() < 0.2) text = mutateText(rand, text, kinds);
    }
    if (rand() < 0.1) {
      spec.root = pick(['expr', 'a', '', 'no-such', 'root', '中文', 'x y', 'r'.repeat(10000)]);
      kinds.push(`root ${JSON.stringify(spec.root).slice(0, 20)}`);
    }
    if (rand() < 0.1) {
      // Bytes that are not UTF-8 in a grammar file, decoded as the CLI's --grammar-file decodes them.
      const bytes = Buffer.from(text, 'utf8');
      const bad = pick([[0xff], [0xc0, 0x80], [0xe4, 0xb8], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80]]);
      const at = Math.floor(rand() * (bytes.length + 1));
      spec.bytes = Buffer.concat([bytes.subarray(0, at), Buffer.from(bad), bytes.subarray(at)]).toString('base64');
      kinds.push('invalid UTF-8');
    } else {
      spec.text = text;
    }
  } else {
    spec.kind = 'schema';
    if (rand() < 0.5) {
      kinds.push('schema mutated');
      spec.json = JSON.stringify(mutateSchema(rand, structuredClone(pick(SCHEMAS)), kinds)) ?? 'null';
    } else {
      kinds.push('schema built');
      spec.json = builtSchema(rand, kinds);
    }
  }
  // Ambiguous grammars show their cost only while generating.
  if (kinds.includes('ambiguous')) spec.generate = true;
  if (spec.generate) kinds.push('generate');
  const path = join(state.workDir, `case-${index % 2}.json`);
  writeFileSync(path, JSON.stringify(spec));
  return { path, kinds };
}

/** The class of a GrammarError, by what it says went wrong. */
function grammarClass(e, kind) {
  if (kind === 'schema') return e.limit ? `rejected: GrammarError schema limit ${e.limit}` : e.keyword ? 'rejected: GrammarError schema keyword' : 'rejected: GrammarError schema';
  if (e.limit) return `rejected: GrammarError limit ${e.limit}`;
  if (/left recursion/i.test(e.message)) return 'rejected: GrammarError left recursion';
  if (/undefined rule/i.test(e.message)) return 'rejected: GrammarError undefined rule';
  if (/no rule named/i.test(e.message)) return 'rejected: GrammarError no root';
  return 'rejected: GrammarError syntax';
}

const ARGUMENT_CODES = ['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE'];

// One model and context per worker, loaded on the first case that generates.
let session;
async function demoContext() {
  session ??= (async () => {
    const model = await loadModel(demoModelPath);
    const context = await model.createContext({ contextSize: 256, threads: 1 });
    return { model, context };
  })();
  return session;
}

const PROMPTS = ['<|beginofutterance|>用户\n请用JSON回答<|endofutterance|>\n<|beginofutterance|>助手\n', '{"', 'Answer: ', '床前明月光，'];

export async function runCase(path) {
  const spec = JSON.parse(readFileSync(path, 'utf8'));
  let grammar;
  try {
    if (spec.kind === 'gbnf') {
      const text = spec.bytes !== undefined ? Buffer.from(spec.bytes, 'base64').toString('utf8') : spec.text;
      grammar = Grammar.compile(text, spec.root === undefined ? undefined : { root: spec.root });
    } else {
      grammar = Grammar.fromJsonSchema(JSON.parse(spec.json));
    }
  } catch (error) {
    if (error instanceof GrammarError) return clean(grammarClass(error, spec.kind), error.message);
    if ((error instanceof TypeError || error instanceof RangeError) && ARGUMENT_CODES.includes(error.code)) {
      return clean(`rejected: ${error.name}`, error.message);
    }
    return unexpected(error, 'compile');
  }
  if (typeof grammar?.gbnf !== 'string') return unexpected(new Error('compiling returned no Grammar'), 'compile');
  if (!spec.generate) return clean('compiled');
  let result;
  try {
    const { model, context } = await demoContext();
    const prompt = PROMPTS[spec.seed % PROMPTS.length];
    const tokens = model.tokenize(prompt, { addBos: true, parseSpecial: true });
    result = await context.generate(tokens, { grammar, temperature: 1, seed: spec.seed % 0xfffffffe, maxTokens: 12 }).result;
  } catch (error) {
    if (error instanceof GrammarError && error.result !== undefined) {
      if (/too ambiguous/.test(error.message)) return clean('compiled, generation refused: GrammarError too ambiguous', error.message);
      return clean('compiled, generation refused: GrammarError', error.message);
    }
    return unexpected(error, 'generate');
  }
  // A schema's grammar that completed (the model then ended) has produced a whole JSON value.
  if (spec.kind === 'schema' && result.stopReason === 'eog') {
    try {
      JSON.parse(result.text);
    } catch {
      return unexpected(new Error(`the grammar of a schema completed with text that is not JSON: ${JSON.stringify(result.text).slice(0, 100)}`), 'generate');
    }
  }
  return clean('compiled, generated');
}
