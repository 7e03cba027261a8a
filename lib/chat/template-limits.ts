// Rendering a Jinja chat template under limits. A template comes from a GGUF file, a template file or a request:
// it is untrusted code. @huggingface/jinja is a tree-walking interpreter whose every step goes through
// Interpreter.evaluate, so a subclass counts steps, watches the clock and the nesting depth, and caps the size of
// every string and list a step produces; range() refuses to build a list past the cap before allocating it, and
// raise_exception() becomes a typed failure carrying the template's text. This runs in-process for the
// synchronous ChatTemplate.render and in the renderer process (template-host.ts) for renderAsync, where the
// memory cap and a kill after the deadline hold even for what these checks cannot see.
import * as jinja from '@huggingface/jinja';
import * as v from '../validate.js';

// The package's index.d.ts imports './runtime' without an extension, which NodeNext resolution cannot follow:
// these are the parts of its API used here, typed by hand.
interface Value {
  type: string;
  value: unknown;
}
interface Environment {
  set(name: string, value: unknown): Value;
}
interface InterpreterBase {
  run(program: Program): Value;
  evaluate(statement: Node, environment: Environment): Value;
}
type Program = { type: 'Program'; body: unknown[] };
type Node = { type: string } | undefined;
const Environment = jinja.Environment as unknown as new (parent?: Environment) => Environment;
const Interpreter = jinja.Interpreter as unknown as new (env?: Environment) => InterpreterBase;
const parse = jinja.parse as unknown as (tokens: unknown) => Program;
const tokenize = jinja.tokenize as unknown as (source: string, options: { lstrip_blocks: boolean; trim_blocks: boolean }) => unknown;

/** Limits on rendering one conversation with a Jinja chat template. */
export interface TemplateLimits {
  /**
   * Interpreter steps (each evaluated node of the template: an expression, a filter call, a loop body...), plus
   * {@link STEPS_PER_MESSAGE} per message of the conversation. Default: 1,000,000 (a ChatML-style template takes
   * about 25 steps per message).
   */
  steps: number;
  /** Characters of any string the template builds, its output included (message contents are not counted). Default: 4 Mi. */
  outputChars: number;
  /** Wall-clock time for one render, in milliseconds. Default: 2000. */
  timeoutMs: number;
  /** Memory of the renderer process of renderAsync (V8's old-generation heap), in MiB. Default: 256. */
  memoryMiB: number;
}

export const DEFAULT_TEMPLATE_LIMITS: Readonly<TemplateLimits> = Object.freeze({
  steps: 1_000_000,
  outputChars: 4 << 20,
  timeoutMs: 2000,
  memoryMiB: 256,
});

/** Steps added to the budget for each message of the conversation. */
export const STEPS_PER_MESSAGE = 1000;
/** Elements of any list the template builds (range() included). */
export const MAX_LIST_LENGTH = 1 << 18;
/** Nested evaluations (macro recursion, deeply nested expressions). */
export const MAX_DEPTH = 1000;

/** Validates a `limits` option; unknown keys are refused. */
export function templateLimits(name: string, value: unknown): TemplateLimits {
  const o = v.options<TemplateLimits>(name, value, ['steps', 'outputChars', 'timeoutMs', 'memoryMiB']);
  return {
    steps: o.steps === undefined ? DEFAULT_TEMPLATE_LIMITS.steps : v.integer(`${name}.steps`, o.steps, 1, 1e12),
    outputChars:
      o.outputChars === undefined ? DEFAULT_TEMPLATE_LIMITS.outputChars : v.integer(`${name}.outputChars`, o.outputChars, 1, 1 << 28),
    timeoutMs: o.timeoutMs === undefined ? DEFAULT_TEMPLATE_LIMITS.timeoutMs : v.integer(`${name}.timeoutMs`, o.timeoutMs, 1, 3_600_000),
    memoryMiB: o.memoryMiB === undefined ? DEFAULT_TEMPLATE_LIMITS.memoryMiB : v.integer(`${name}.memoryMiB`, o.memoryMiB, 16, 1 << 16),
  };
}

/** Why a render failed, in a form that crosses a process boundary. */
export interface TemplateFailureInfo {
  reason: 'syntax' | 'exception' | 'limit' | 'error';
  limit?: string;
  /** What went wrong, without the template's name (the caller adds it). */
  message: string;
}

export class TemplateFailure extends Error {
  readonly info: TemplateFailureInfo;
  constructor(info: TemplateFailureInfo) {
    super(info.message);
    this.info = info;
  }
}

class Raised extends Error {}


/** Parses a template (lexer options as @huggingface/jinja's Template: trim_blocks, lstrip_blocks). */
export function parseTemplate(source: string): Program {
  try {
    return parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }));
  } catch (error) {
    throw new TemplateFailure({ reason: 'syntax', message: `does not parse: ${messageOf(error)}` });
  }
}

function messageOf(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.length > 2000 ? `${text.slice(0, 2000)}...` : text;
}

function limitFailure(limit: string, message: string): TemplateFailure {
  return new TemplateFailure({ reason: 'limit', limit, message });
}

class BoundedInterpreter extends Interpreter {
  #steps = 0;
  #calls = 0;
  #depth = 0;
  readonly #maxSteps: number;
  readonly #maxChars: number;
  readonly #deadline: number;
  readonly #timeoutMs: number;

  constructor(env: Environment, limits: TemplateLimits, messages: number) {
    super(env);
    this.#maxSteps = limits.steps + STEPS_PER_MESSAGE * messages;
    this.#maxChars = limits.outputChars;
    this.#timeoutMs = limits.timeoutMs;
    this.#deadline = performance.now() + limits.timeoutMs;
  }

  // Numeric arguments that size a filter's output (`indent(width)`, `tojson(indent=n)`): checked before the
  // filter runs, which would otherwise build a string of that many spaces in one step.
  readonly #widths = new WeakSet<object>();
  // The iterables of for loops (see evaluate).
  readonly #iterables = new WeakSet<object>();

  override evaluate(statement: Node, environment: Environment): Value {
    if (statement?.type === 'FilterExpression') this.#markWidths(statement);
    else if (statement?.type === 'For') {
      const iterable = (statement as { iterable?: { type?: string; lhs?: object } }).iterable;
      const node = iterable?.type === 'SelectExpression' ? iterable.lhs : iterable;
      if (node) this.#iterables.add(node);
    }
    const steps = ++this.#steps;
    if (steps > this.#maxSteps) {
      throw limitFailure('steps', `took more than ${this.#maxSteps} steps (limits.steps plus ${STEPS_PER_MESSAGE} per message)`);
    }
    if ((++this.#calls & 255) === 0) this.#checkTime();
    if (++this.#depth > MAX_DEPTH) {
      this.#depth = 0; // the failure unwinds every level
      throw limitFailure('depth', `nests deeper than ${MAX_DEPTH} levels (recursion?)`);
    }
    let value: Value;
    try {
      value = super.evaluate(statement, environment);
    } finally {
      this.#depth--;
    }
    this.check(value);
    if (statement && this.#iterables.has(statement)) {
      // A for loop prepares every iteration before running the first (O(n) work no step sees): charge it now.
      const x = value.value;
      const n = Array.isArray(x) ? x.length : x instanceof Map ? x.size : 0;
      this.#steps += n;
      if (this.#steps > this.#maxSteps) {
        throw limitFailure('steps', `took more than ${this.#maxSteps} steps (limits.steps plus ${STEPS_PER_MESSAGE} per message): a loop over ${n} items`);
      }
      if (n > 255) this.#checkTime();
    }
    if (statement && this.#widths.has(statement) && typeof value.value === 'number' && value.value > this.#maxChars) {
      throw limitFailure('outputChars', `asked a filter for a width of ${value.value}, more than limits.outputChars (${this.#maxChars})`);
    }
    return value;
  }

  #checkTime(): void {
    if (performance.now() > this.#deadline) throw limitFailure('timeoutMs', `took longer than ${this.#timeoutMs} ms`);
  }

  #markWidths(node: object): void {
    const filter = (node as { filter?: { type?: string; callee?: { value?: unknown }; args?: unknown[] } }).filter;
    if (filter?.type !== 'CallExpression' || !WIDTH_FILTERS.has(String(filter.callee?.value))) return;
    for (const arg of filter.args ?? []) {
      const a = arg as { type?: string; value?: object };
      if (a.type === 'KeywordArgumentExpression' && a.value) this.#widths.add(a.value);
      else if (arg && typeof arg === 'object') this.#widths.add(arg);
    }
  }

  check(value: Value): void {
    const x = value.value as unknown;
    if (typeof x === 'string') {
      if (x.length > this.#maxChars) {
        throw limitFailure('outputChars', `built a string of ${x.length} characters, more than limits.outputChars (${this.#maxChars})`);
      }
    } else if (Array.isArray(x)) {
      if (x.length > MAX_LIST_LENGTH) {
        throw limitFailure('arrayLength', `built a list of ${x.length} items, more than ${MAX_LIST_LENGTH}`);
      }
    }
  }
}

const WIDTH_FILTERS = new Set(['indent', 'tojson', 'center', 'wordwrap']);

function boundedRange(start: unknown, stop?: unknown, step: unknown = 1): number[] {
  if (stop === undefined || stop === null) {
    stop = start;
    start = 0;
  }
  for (const x of [start, stop, step]) {
    if (typeof x !== 'number' || !Number.isSafeInteger(x)) throw new Error(`range() arguments must be integers, got ${String(x)}`);
  }
  const [a, b, s] = [start as number, stop as number, step as number];
  if (s === 0) throw new Error('range() step must not be zero');
  const count = s > 0 ? Math.max(0, Math.ceil((b - a) / s)) : Math.max(0, Math.ceil((a - b) / -s));
  if (count > MAX_LIST_LENGTH) {
    throw limitFailure('arrayLength', `asked range() for ${count} numbers, more than ${MAX_LIST_LENGTH}`);
  }
  const out = new Array<number>(count);
  for (let i = 0; i < count; i++) out[i] = a + i * s;
  return out;
}

/**
 * Renders a parsed template with `variables` under `limits` (`messages`: how many messages the conversation has,
 * for the step budget). Throws a {@link TemplateFailure}.
 */
export function renderBounded(program: Program, variables: Record<string, unknown>, limits: TemplateLimits, messages: number): string {
  const env = new Environment();
  // @huggingface/jinja's own globals (setupGlobals), with range and raise_exception replaced.
  env.set('false', false);
  env.set('true', true);
  env.set('none', null);
  env.set('False', false);
  env.set('True', true);
  env.set('None', null);
  env.set('raise_exception', (text: unknown) => {
    throw new Raised(typeof text === 'string' ? text : String(text));
  });
  env.set('range', boundedRange);
  env.set('strftime_now', (format: unknown) => {
    if (typeof format !== 'string') throw new Error('strftime_now() takes a format string');
    return strftime(new Date(), format);
  });
  const interpreter = new BoundedInterpreter(env, limits, messages);
  try {
    for (const [key, value] of Object.entries(variables)) {
      if (!RESERVED.has(key)) env.set(key, value);
    }
    const result = interpreter.run(program);
    interpreter.check(result);
    return String(result.value);
  } catch (error) {
    throw toFailure(error, limits);
  }
}

const RESERVED = new Set(['false', 'true', 'none', 'False', 'True', 'None', 'raise_exception', 'range', 'strftime_now']);

function toFailure(error: unknown, limits: TemplateLimits): TemplateFailure {
  if (error instanceof TemplateFailure) return error;
  if (error instanceof Raised) return new TemplateFailure({ reason: 'exception', message: `raised an exception: ${messageOf(error)}` });
  if (error instanceof RangeError) {
    if (/call stack/i.test(error.message)) return limitFailure('depth', 'nests too deeply (the call stack overflowed)');
    if (/string length/i.test(error.message)) {
      return limitFailure('outputChars', `built a string longer than JavaScript allows (limits.outputChars ${limits.outputChars})`);
    }
    if (/array length|invalid size/i.test(error.message)) return limitFailure('arrayLength', `built a list longer than ${MAX_LIST_LENGTH} items`);
  }
  return new TemplateFailure({ reason: 'error', message: `failed: ${messageOf(error)}` });
}

// @huggingface/jinja's strftime_now (not exported by the package): %Y %m %d %b %B %H %M %%.
function strftime(date: Date, format: string): string {
  const pad2 = (n: number) => (n < 10 ? `0${n}` : String(n));
  return format.replace(/%[YmdbBHM%]/g, (token) => {
    switch (token) {
      case '%Y': return String(date.getFullYear());
      case '%m': return pad2(date.getMonth() + 1);
      case '%d': return pad2(date.getDate());
      case '%b': return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B': return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H': return pad2(date.getHours());
      case '%M': return pad2(date.getMinutes());
      default: return '%';
    }
  });
}
