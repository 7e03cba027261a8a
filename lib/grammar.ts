// GBNF grammars, compiled once and reused: the text is checked against the limits that keep llama.cpp's
// recursive parser safe, then parsed natively into llama.cpp's own form (src/grammar.cc), which each generation
// copies instead of parsing again.
import { binding, type NativeGrammar } from './binding.js';
import { GrammarError } from './errors.js';
import { checkJsonSchema, patternsOf } from './json-schema.js';
import * as v from './validate.js';

/**
 * What a grammar may take, so that parsing it can neither overflow the stack nor exhaust memory: `bytes` of GBNF
 * text; `depth` of nested parentheses (llama.cpp's parser recurses once per level); `rules` and `elements` after
 * repetitions are expanded (`x{0,100}` is 100 rules; `"abc"{50}` is 150 elements), estimated before parsing
 * and the rules counted again while parsing. Each refusal is a {@link GrammarError} with `limit` naming it.
 */
export const GRAMMAR_LIMITS = Object.freeze({ bytes: 1 << 20, depth: 256, rules: 100_000, elements: 2_000_000 });

const natives = new WeakMap<Grammar, NativeGrammar>();
let anyString: string | undefined;

/**
 * A GBNF grammar (llama.cpp's format: grammars/README.md in llama.cpp), parsed and validated once: pass it as the
 * `grammar` option of any number of generations, on any context or model. Build one with {@link Grammar.compile}
 * or {@link Grammar.fromJsonSchema}.
 */
export class Grammar {
  /** The GBNF text. */
  readonly gbnf: string;
  /** The rule a generation starts from. */
  readonly root: string;

  private constructor(gbnf: string, root: string, native: NativeGrammar) {
    this.gbnf = gbnf;
    this.root = root;
    natives.set(this, native);
  }

  /**
   * Parses and validates GBNF text: syntax, undefined rules, the root rule, left recursion and
   * {@link GRAMMAR_LIMITS}. Throws {@link GrammarError} with the byte `position` (and `line`, `column`).
   * Tokens named by their text (`<|tool_call|>`) are resolved against each generation's vocabulary.
   */
  static compile(gbnf: string, options?: { root?: string }): Grammar {
    v.string('gbnf', gbnf);
    const o = v.options<{ root?: string }>('options', options, ['root']);
    const root = o.root === undefined ? 'root' : v.string('root', o.root);
    if (!/^[A-Za-z0-9-]+$/.test(root)) throw v.rangeError('a rule name (letters, digits, -)', 'root', JSON.stringify(root));
    const bytes = Buffer.from(gbnf, 'utf8');
    const scan = scanGbnf(bytes);
    let native: NativeGrammar;
    try {
      native = binding().grammarCompile(gbnf, root, scan.tokenNames ? scan.validation.toString('utf8') : undefined);
    } catch (error) {
      throw grammarError(error, bytes, scan);
    }
    return new Grammar(gbnf, root, native);
  }

  /**
   * A grammar for the JSON values a JSON Schema describes, through llama.cpp's converter
   * (common/json-schema-to-grammar.cpp): objects (properties, required, additionalProperties), arrays (items,
   * prefixItems, minItems, maxItems up to 2000), strings (minLength, maxLength up to 2000, the patterns and
   * formats it supports), integers with bounds, numbers, booleans, null, enum, const, local `$ref` with `$defs`,
   * anyOf, oneOf (as anyOf), allOf of objects or enums. A keyword it would ignore or cannot honour is a
   * {@link GrammarError} naming `keyword` and its JSON Pointer `path`; annotations (title, description, default,
   * examples, ...) are fine.
   */
  static fromJsonSchema(schema: object): Grammar {
    if (typeof schema !== 'object' || schema === null || Array.isArray(schema)) {
      throw v.typeError('a JSON Schema object', 'schema', schema);
    }
    checkJsonSchema(schema);
    // The converter falls back to "any string" for a pattern it cannot translate (printing a warning): such a
    // pattern converts to exactly what an unanchored one (never translated) does.
    const patterns = patternsOf(schema);
    // Once per process: the converter prints its warning to stderr each time.
    if (patterns.length > 0) anyString ??= toGbnf({ type: 'string', pattern: 'x' });
    for (const { pattern, path } of patterns) {
      let converted: string;
      try {
        converted = toGbnf({ type: 'string', pattern });
      } catch (error) {
        throw new GrammarError(`The pattern ${JSON.stringify(pattern)} at ${path}: ${(error as Error).message}`, { keyword: 'pattern', path });
      }
      if (converted === anyString) {
        throw new GrammarError(`The pattern ${JSON.stringify(pattern)} at ${path} has no grammar equivalent in llama.cpp's converter`, {
          keyword: 'pattern', path,
        });
      }
    }
    return Grammar.compile(toGbnf(schema));
  }
}

/** @internal The native handle a generation passes on. */
export function nativeGrammar(grammar: Grammar): NativeGrammar {
  const native = natives.get(grammar);
  if (native === undefined) throw v.typeError('a Grammar from Grammar.compile or Grammar.fromJsonSchema', 'grammar', grammar);
  return native;
}

function toGbnf(schema: object): string {
  try {
    return binding().jsonSchemaToGrammar(JSON.stringify(schema));
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new GrammarError(message.replace(/^JSON schema conversion failed:\s*/, 'The JSON Schema cannot be converted: '));
  }
}

/** @internal What scanGbnf learnt about a text. */
export interface GbnfScan {
  /** The text with each token named by its text replaced by `.` and spaces (same length), when it has any. */
  validation: Buffer;
  tokenNames: boolean;
  /** Each rule name's definition and first reference (byte offsets). */
  definitions: Map<string, number>;
  references: Map<string, number>;
}

const isWord = (c: number) => (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2d;
const isDigit = (c: number) => c >= 0x30 && c <= 0x39;
const isBlank = (c: number) => c === 0x20 || c === 0x09 || c === 0x0d || c === 0x0a;

/** Bytes one character of a literal or a class takes in llama.cpp's parse_char (escapes, UTF-8 lead bytes). */
function charLength(b: Uint8Array, i: number): number {
  if (b[i] === 0x5c) {
    const e = b[i + 1];
    return e === 0x78 ? 4 : e === 0x75 ? 6 : e === 0x55 ? 10 : 2;
  }
  const hi = b[i] >> 4;
  return hi < 0xc ? 1 : hi < 0xe ? 2 : hi === 0xe ? 3 : 4;
}

/**
 * @internal One pass over GBNF bytes as llama.cpp's parser reads them (literals, classes, tokens, comments,
 * groups, repetitions), enforcing {@link GRAMMAR_LIMITS} before the recursive native parser sees the text. The
 * estimate of rules and elements errs high: repetitions are counted as llama.cpp expands them.
 */
export function scanGbnf(b: Buffer): GbnfScan {
  const fail = (message: string, position: number, limit?: string) => {
    throw new GrammarError(`${message} at byte ${position}${where(b, position)}`, { position, ...lineColumn(b, position), limit });
  };
  if (b.length > GRAMMAR_LIMITS.bytes) {
    fail(`The grammar is ${b.length} bytes, more than the limit of ${GRAMMAR_LIMITS.bytes}`, GRAMMAR_LIMITS.bytes, 'bytes');
  }
  const nul = b.indexOf(0);
  if (nul >= 0) fail('A NUL byte cannot be part of a grammar', nul);
  let validation = b;
  let tokenNames = false;
  const definitions = new Map<string, number>();
  const references = new Map<string, number>();
  let depth = 0;
  let rules = 0;
  let elements = 0;
  let last = 0; // elements of the item a repetition would repeat
  const n = b.length;
  let i = 0;
  const check = (at: number) => {
    if (rules > GRAMMAR_LIMITS.rules) fail(`The grammar expands to more than ${GRAMMAR_LIMITS.rules} rules`, at, 'rules');
    if (elements > GRAMMAR_LIMITS.elements) fail(`The grammar expands to more than ${GRAMMAR_LIMITS.elements} elements`, at, 'elements');
  };
  const repeat = (count: number, at: number) => {
    rules += count;
    elements += last * (count + 1) + 3 * count;
    last = last * count + 1;
    check(at);
  };
  while (i < n) {
    const c = b[i];
    const start = i;
    if (isBlank(c)) {
      i++;
    } else if (c === 0x23 /* # */) {
      while (i < n && b[i] !== 0x0a && b[i] !== 0x0d) i++;
    } else if (c === 0x22 /* " */ || c === 0x5b /* [ */) {
      const close = c === 0x22 ? 0x22 : 0x5d;
      i++;
      if (c === 0x5b && b[i] === 0x5e) i++;
      let count = 0;
      while (i < n && b[i] !== close) {
        i += charLength(b, i);
        count++;
      }
      i++;
      last = count + 1;
      elements += last;
      check(start);
    } else if (c === 0x3c /* < */ || (c === 0x21 /* ! */ && b[i + 1] === 0x3c)) {
      const open = c === 0x21 ? i + 1 : i;
      const end = b.indexOf(0x3e, open);
      i = end < 0 ? n : end + 1;
      if (b[open + 1] !== 0x5b /* [ */) {
        // A token named by its text needs a vocabulary: validated as `.` (one element, like a token).
        if (!tokenNames) validation = Buffer.from(b);
        tokenNames = true;
        validation.fill(0x20, start, i);
        validation[start] = 0x2e;
      }
      last = 1;
      elements++;
    } else if (c === 0x28 /* ( */) {
      depth++;
      if (depth > GRAMMAR_LIMITS.depth) fail(`Parentheses nest more than ${GRAMMAR_LIMITS.depth} deep`, i, 'depth');
      rules++;
      last = 0;
      i++;
    } else if (c === 0x29 /* ) */) {
      if (depth > 0) depth--;
      last = 1;
      elements++;
      i++;
    } else if (c === 0x2a || c === 0x2b || c === 0x3f /* * + ? */) {
      repeat(1, i);
      i++;
    } else if (c === 0x7b /* { */) {
      // As llama.cpp's parse_sequence reads `{m}`, `{m,}`, `{m,n}` (blanks and comments between the parts).
      const skip = () => {
        while (i < n && (isBlank(b[i]) || b[i] === 0x23)) {
          if (b[i] === 0x23) while (i < n && b[i] !== 0x0a && b[i] !== 0x0d) i++;
          else i++;
        }
      };
      const int = () => {
        let value: number | undefined;
        while (i < n && isDigit(b[i])) value = Math.min((value ?? 0) * 10 + (b[i++] - 0x30), 1e9);
        return value;
      };
      i++;
      skip();
      const min = int() ?? 0;
      skip();
      let max = min;
      if (b[i] === 0x2c /* , */) {
        i++;
        skip();
        const upper = int();
        // llama.cpp computes max - min unsigned: a maximum below the minimum would make it add rules forever.
        if (upper !== undefined && upper < min) fail(`The repetition {${min},${upper}} has a maximum below its minimum`, start);
        // More than 2000 is no maximum to llama.cpp (and more than 2000 as a minimum, an error).
        max = upper === undefined || upper > 2000 ? Math.min(min, 2001) + 1 : upper;
      }
      repeat(Math.max(Math.min(min, 2001), max, 1), start);
    } else if (isWord(c)) {
      while (i < n && isWord(b[i])) i++;
      const name = b.toString('latin1', start, i);
      let j = i;
      while (j < n && (b[j] === 0x20 || b[j] === 0x09)) j++;
      if (b[j] === 0x3a && b[j + 1] === 0x3a && b[j + 2] === 0x3d) {
        if (!definitions.has(name)) definitions.set(name, start);
        rules++;
        depth = 0;
        last = 0;
        i = j + 3;
      } else {
        if (!references.has(name)) references.set(name, start);
        last = 1;
        elements++;
      }
      check(start);
    } else {
      last = c === 0x2e /* . */ ? 1 : 0;
      elements++;
      i++;
    }
  }
  return { validation, tokenNames, definitions, references };
}

function lineColumn(b: Uint8Array, position: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  const end = Math.min(position, b.length);
  for (let i = 0; i < end; i++) {
    if (b[i] === 0x0a) {
      line++;
      lineStart = i + 1;
    }
  }
  return { line, column: end - lineStart + 1 };
}

function where(b: Buffer, position: number): string {
  const { line, column } = lineColumn(b, position);
  const near = b.subarray(position, position + 24).toString('utf8').replace(/[\r\n].*$/s, '');
  return ` (line ${line}, column ${column})${near ? `: ${JSON.stringify(near)}` : ''}`;
}

/** The native parser's error as a GrammarError with a position, line and column. */
function grammarError(error: unknown, b: Buffer, scan: GbnfScan): Error {
  const e = error as Error & { code?: string; position?: number; rule?: string; limit?: string };
  if (e?.code !== 'ERR_HUOZI_GRAMMAR') return error as Error;
  let position = typeof e.position === 'number' && e.position >= 0 ? e.position : -1;
  if (position < 0 && e.rule !== undefined) {
    // An undefined rule is where it is first used; left recursion, where the rule (or the rule a group or
    // repetition inside it was generated from: `item_3`) is defined.
    let name = e.rule;
    for (;;) {
      const at = scan.definitions.get(name) ?? (e.message.startsWith('undefined') ? scan.references.get(name) : undefined);
      if (at !== undefined) {
        position = at;
        break;
      }
      const base = name.replace(/_\d+$/, '');
      if (base === name) break;
      name = base;
    }
  }
  if (position < 0) position = 0;
  const message = `${e.message.charAt(0).toUpperCase()}${e.message.slice(1)} at byte ${position}${where(b, position)}`;
  return new GrammarError(message, { position, ...lineColumn(b, position), rule: e.rule, limit: e.limit });
}
