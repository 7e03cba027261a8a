// vLLM's `guided_regex` as a GBNF grammar. The answer must match the whole regex (as vLLM's backends do), so
// the regex is turned into a grammar of the same language: only features that define a set of strings
// translate. Lookarounds, backreferences, word boundaries, inline flags and possessive quantifiers do not
// (or not without a regex engine in the sampler): they are refused with their names, never dropped.
//
// Supported: literals and escaped punctuation; `.` (any character but a newline); character classes with
// ranges and negation; `\d \w \s` and their negations; `\t \n \r \f \v \0 \xHH \uHHHH \u{H…}`; groups
// `( )`, `(?: )`, `(?<name> )`, `(?P<name> )`; alternation; `* + ? {n} {n,} {n,m} {,m}` and their lazy forms (a
// lazy quantifier matches the same strings); `^` at the start and `$` at the end.

/** A regex feature this converter cannot express as a grammar (the message names it). */
export class RegexError extends Error {
  /** The feature, as named in the documentation ("lookahead", "backreference", ...). */
  readonly feature: string;
  constructor(feature: string, message: string) {
    super(message);
    this.name = 'RegexError';
    this.feature = feature;
  }
}

/** GBNF's repetition bound is 2000 (llama-grammar.cpp MAX_REPETITION_THRESHOLD); nested counts multiply. */
const MAX_COUNT = 1000;

type Range = [number, number];
type Node =
  | { kind: 'chars'; ranges: Range[]; negated: boolean }
  | { kind: 'literal'; cp: number }
  | { kind: 'seq'; items: Node[] }
  | { kind: 'alt'; options: Node[] }
  | { kind: 'repeat'; node: Node; min: number; max: number };

const DIGIT: Range[] = [[0x30, 0x39]];
const WORD: Range[] = [[0x30, 0x39], [0x41, 0x5a], [0x5f, 0x5f], [0x61, 0x7a]];
// Python's and JavaScript's ASCII whitespace.
const SPACE: Range[] = [[0x09, 0x0d], [0x20, 0x20]];

class Parser {
  readonly #src: number[];
  #i = 0;

  constructor(pattern: string) {
    this.#src = Array.from(pattern, (c) => c.codePointAt(0)!);
  }

  parse(): Node {
    if (this.#peek() === 0x5e /* ^ */) this.#i++;
    const node = this.#alternation(true);
    if (this.#i < this.#src.length) {
      // Only an unbalanced ')' stops the top level early.
      throw new RegexError('syntax', `guided_regex: unbalanced ')' at position ${this.#i}.`);
    }
    return node;
  }

  #peek(offset = 0): number | undefined {
    return this.#src[this.#i + offset];
  }

  #fail(feature: string, what: string): never {
    throw new RegexError(feature, `guided_regex: ${what} (at position ${this.#i}) is not supported: the answer is constrained by a grammar, which can only express regexes that define a set of strings.`);
  }

  #alternation(top: boolean): Node {
    const options = [this.#sequence(top)];
    while (this.#peek() === 0x7c /* | */) {
      this.#i++;
      options.push(this.#sequence(top));
    }
    return options.length === 1 ? options[0] : { kind: 'alt', options };
  }

  #sequence(top: boolean): Node {
    const items: Node[] = [];
    for (;;) {
      const c = this.#peek();
      if (c === undefined || c === 0x7c || c === 0x29 /* ) */) break;
      if (c === 0x24 /* $ */) {
        // An end anchor: only where the regex ends anyway (the whole answer is matched).
        if (top && (this.#peek(1) === undefined || this.#peek(1) === 0x7c)) {
          this.#i++;
          continue;
        }
        this.#fail('anchor', "'$' other than at the end");
      }
      if (c === 0x5e /* ^ */) {
        if (top && items.length === 0 && this.#src[this.#i - 1] === 0x7c) {
          this.#i++;
          continue;
        }
        this.#fail('anchor', "'^' other than at the start");
      }
      const atom = this.#atom();
      items.push(this.#quantified(atom));
    }
    return items.length === 1 ? items[0] : { kind: 'seq', items };
  }

  #quantified(atom: Node): Node {
    let node = atom;
    for (;;) {
      const c = this.#peek();
      let min: number;
      let max: number;
      if (c === 0x2a /* * */) [min, max] = [0, Infinity];
      else if (c === 0x2b /* + */) [min, max] = [1, Infinity];
      else if (c === 0x3f /* ? */) [min, max] = [0, 1];
      else if (c === 0x7b /* { */) {
        const counted = this.#counts();
        if (counted === undefined) return node; // a literal '{', as both Python and JavaScript read it
        [min, max] = counted;
        this.#i--; // #counts consumed through '}'; the common step below moves past it
      } else return node;
      this.#i++;
      if (this.#peek() === 0x3f) this.#i++; // lazy: the same strings
      else if (this.#peek() === 0x2b) this.#fail('possessive quantifier', 'a possessive quantifier');
      if (node.kind === 'repeat') this.#fail('nested quantifier', 'a quantifier on a quantifier');
      node = { kind: 'repeat', node, min, max };
    }
  }

  /** `{n}`, `{n,}`, `{n,m}` from the current '{' (consumed with its '}'), or undefined when it is a literal. */
  #counts(): [number, number] | undefined {
    const rest = String.fromCodePoint(...this.#src.slice(this.#i, this.#i + 24));
    // Python's forms: {n}, {n,}, {n,m} and {,m} (from 0); anything else is a literal '{'.
    const m = /^\{(\d*)(?:(,)(\d*))?\}/.exec(rest);
    if (!m || (m[1] === '' && m[2] === undefined)) return undefined;
    const min = Number(m[1]);
    const max = m[2] === undefined ? min : m[3] === '' ? Infinity : Number(m[3]);
    if (min > MAX_COUNT || (max !== Infinity && max > MAX_COUNT)) {
      this.#fail('large repetition count', `a repetition count above ${MAX_COUNT}`);
    }
    if (max < min) throw new RegexError('syntax', `guided_regex: {${min},${max}} has its bounds in the wrong order (at position ${this.#i}).`);
    this.#i += m[0].length;
    return [min, max];
  }

  #atom(): Node {
    const c = this.#src[this.#i];
    switch (c) {
      case 0x28 /* ( */:
        return this.#group();
      case 0x5b /* [ */:
        this.#i++;
        return this.#class();
      case 0x2e /* . */:
        this.#i++;
        return { kind: 'chars', ranges: [[0x0a, 0x0a]], negated: true };
      case 0x5c /* \ */:
        return this.#escape(false);
      case 0x2a:
      case 0x2b:
      case 0x3f:
        throw new RegexError('syntax', `guided_regex: nothing to repeat at position ${this.#i}.`);
      default:
        this.#i++;
        return { kind: 'literal', cp: c };
    }
  }

  #group(): Node {
    this.#i++; // (
    if (this.#peek() === 0x3f /* ? */) {
      const next = this.#peek(1);
      const after = this.#peek(2);
      if (next === 0x3a /* : */) this.#i += 2;
      else if (next === 0x3d || next === 0x21) this.#fail('lookahead', 'a lookahead');
      else if (next === 0x3c /* < */ && (after === 0x3d || after === 0x21)) this.#fail('lookbehind', 'a lookbehind');
      else if (next === 0x3c || (next === 0x50 /* P */ && after === 0x3c)) {
        // A named group: a group.
        const close = this.#src.indexOf(0x3e /* > */, this.#i);
        if (close < 0) throw new RegexError('syntax', `guided_regex: an unterminated group name at position ${this.#i}.`);
        this.#i = close + 1;
      } else if (next === 0x50 && after === 0x3d) this.#fail('backreference', 'a backreference (?P=name)');
      else if (next === 0x3e) this.#fail('atomic group', 'an atomic group');
      else if (next === 0x23 /* # */) this.#fail('comment group', 'a comment group');
      else this.#fail('inline flags', 'inline flags or another (?…) construct');
    }
    const node = this.#alternation(false);
    if (this.#peek() !== 0x29) throw new RegexError('syntax', `guided_regex: a group opened is never closed (at position ${this.#i}).`);
    this.#i++;
    return node;
  }

  /** After '\': a character set (\d), a literal (\n, \.), or a refusal. `inClass`: inside [...]. */
  #escape(inClass: boolean): Node {
    this.#i++; // backslash
    const c = this.#src[this.#i];
    if (c === undefined) throw new RegexError('syntax', 'guided_regex: the pattern ends with a lone backslash.');
    this.#i++;
    const ch = String.fromCodePoint(c);
    const set = (ranges: Range[], negated: boolean): Node => ({ kind: 'chars', ranges, negated });
    switch (ch) {
      case 'd': return set(DIGIT, false);
      case 'D': return set(DIGIT, true);
      case 'w': return set(WORD, false);
      case 'W': return set(WORD, true);
      case 's': return set(SPACE, false);
      case 'S': return set(SPACE, true);
      case 't': return { kind: 'literal', cp: 0x09 };
      case 'n': return { kind: 'literal', cp: 0x0a };
      case 'r': return { kind: 'literal', cp: 0x0d };
      case 'f': return { kind: 'literal', cp: 0x0c };
      case 'v': return { kind: 'literal', cp: 0x0b };
      case '0': return { kind: 'literal', cp: 0 };
      case 'x': return { kind: 'literal', cp: this.#hex(2) };
      case 'u':
        if (this.#peek() === 0x7b /* { */) {
          const close = this.#src.indexOf(0x7d, this.#i);
          const digits = close < 0 ? '' : String.fromCodePoint(...this.#src.slice(this.#i + 1, close));
          if (!/^[0-9a-fA-F]{1,6}$/.test(digits) || parseInt(digits, 16) > 0x10ffff) {
            throw new RegexError('syntax', `guided_regex: a bad \\u{…} escape at position ${this.#i}.`);
          }
          this.#i = close + 1;
          return { kind: 'literal', cp: parseInt(digits, 16) };
        }
        return { kind: 'literal', cp: this.#hex(4) };
      case 'b':
        // Inside a class \b is a backspace, as in Python and JavaScript.
        if (inClass) return { kind: 'literal', cp: 0x08 };
        this.#i--;
        return this.#fail('word boundary', 'a word boundary \\b');
      case 'B':
        this.#i--;
        return this.#fail('word boundary', 'a non-boundary \\B');
      case 'A': case 'Z': case 'z': case 'G':
        this.#i--;
        return this.#fail('anchor', `the anchor \\${ch}`);
      case 'p': case 'P':
        this.#i--;
        return this.#fail('unicode property', `a Unicode property \\${ch}{…}`);
      case 'k':
        this.#i--;
        return this.#fail('backreference', 'a backreference \\k<name>');
      case 'c':
        this.#i--;
        return this.#fail('control escape', 'a control escape \\c');
      default:
        if (c >= 0x31 && c <= 0x39) {
          this.#i--;
          this.#fail('backreference', `a backreference \\${ch}`);
        }
        // Any other escaped letter or digit means something in some dialect: refused rather than guessed.
        if (/[A-Za-z0-9]/.test(ch)) {
          this.#i--;
          this.#fail('unknown escape', `the escape \\${ch}`);
        }
        return { kind: 'literal', cp: c };
    }
  }

  #hex(count: number): number {
    const digits = String.fromCodePoint(...this.#src.slice(this.#i, this.#i + count));
    if (digits.length !== count || !/^[0-9a-fA-F]+$/.test(digits)) {
      throw new RegexError('syntax', `guided_regex: expected ${count} hex digits at position ${this.#i}.`);
    }
    this.#i += count;
    return parseInt(digits, 16);
  }

  /** After '[': the class up to its ']'. */
  #class(): Node {
    let negated = false;
    if (this.#peek() === 0x5e) {
      negated = true;
      this.#i++;
    }
    const ranges: Range[] = [];
    let first = true;
    for (;;) {
      const c = this.#peek();
      if (c === undefined) throw new RegexError('syntax', 'guided_regex: a character class is never closed.');
      // ']' first in a class is a literal in Python (JavaScript reads [] as the empty class: refused below).
      if (c === 0x5d && !first) {
        this.#i++;
        break;
      }
      if (c === 0x5b && this.#peek(1) === 0x3a /* [: */) this.#fail('POSIX class', 'a POSIX class [:…:]');
      first = false;
      const low = this.#classAtom();
      if (low.kind === 'chars') {
        if (low.negated) this.#fail('negated shorthand in a class', 'a negated shorthand (\\D, \\W, \\S) inside a character class');
        ranges.push(...low.ranges);
        continue;
      }
      if (this.#peek() === 0x2d /* - */ && this.#peek(1) !== undefined && this.#peek(1) !== 0x5d) {
        this.#i++;
        const high = this.#classAtom();
        if (high.kind === 'chars') this.#fail('range to a shorthand', 'a range ending in a shorthand class');
        if (high.cp < low.cp) throw new RegexError('syntax', `guided_regex: the range ending at position ${this.#i} is out of order.`);
        ranges.push([low.cp, high.cp]);
      } else ranges.push([low.cp, low.cp]);
    }
    if (ranges.length === 0) throw new RegexError('syntax', 'guided_regex: an empty character class matches nothing.');
    return { kind: 'chars', ranges, negated };
  }

  #classAtom(): { kind: 'literal'; cp: number } | { kind: 'chars'; ranges: Range[]; negated: boolean } {
    if (this.#peek() === 0x5c) {
      const node = this.#escape(true);
      if (node.kind !== 'literal' && node.kind !== 'chars') throw new Error('unreachable');
      return node;
    }
    return { kind: 'literal', cp: this.#src[this.#i++] };
  }
}

/** A code point as GBNF writes it inside a string or a class: printable ASCII letters and digits as they are. */
function gbnfChar(cp: number): string {
  if ((cp >= 0x30 && cp <= 0x39) || (cp >= 0x41 && cp <= 0x5a) || (cp >= 0x61 && cp <= 0x7a) || cp === 0x20) return String.fromCodePoint(cp);
  if (cp <= 0xff) return `\\x${cp.toString(16).padStart(2, '0')}`;
  if (cp <= 0xffff) return `\\u${cp.toString(16).padStart(4, '0')}`;
  return `\\U${cp.toString(16).padStart(8, '0')}`;
}

function emit(node: Node): string {
  switch (node.kind) {
    case 'literal':
      return `"${gbnfChar(node.cp)}"`;
    case 'chars':
      return `[${node.negated ? '^' : ''}${node.ranges.map(([a, b]) => (a === b ? gbnfChar(a) : `${gbnfChar(a)}-${gbnfChar(b)}`)).join('')}]`;
    case 'seq': {
      // Runs of literals become one GBNF string.
      const parts: string[] = [];
      let run = '';
      for (const item of node.items) {
        if (item.kind === 'literal') run += gbnfChar(item.cp);
        else {
          if (run) parts.push(`"${run}"`);
          run = '';
          parts.push(emit(item));
        }
      }
      if (run) parts.push(`"${run}"`);
      return parts.length === 0 ? '""' : parts.length === 1 ? parts[0] : `(${parts.join(' ')})`;
    }
    case 'alt':
      return `(${node.options.map(emit).join(' | ')})`;
    case 'repeat': {
      const inner = emit(node.node);
      const { min, max } = node;
      if (max === 0) return '""';
      if (min === 0 && max === Infinity) return `${inner}*`;
      if (min === 1 && max === Infinity) return `${inner}+`;
      if (min === 0 && max === 1) return `${inner}?`;
      if (max === Infinity) return `${inner}{${min},}`;
      return min === max ? `${inner}{${min}}` : `${inner}{${min},${max}}`;
    }
  }
}

/** The GBNF grammar (root `root`) of the strings that match `pattern` as a whole. Throws RegexError. */
export function regexToGbnf(pattern: string): string {
  return `root ::= ${emit(new Parser(pattern).parse())}\n`;
}
