// The one generation core, under Context.generate, ParallelContext.generate and ChatSession: the options and
// their checks, the native parameters, the result, and the Generation a caller iterates.
import type { NativeGenerateParams, NativeGenerateResult, NativeTokenLogprob } from './binding.js';
import { AbortError, fromNative } from './errors.js';
import { Grammar, nativeGrammar } from './grammar.js';
import * as v from './validate.js';
import type { LoraSetting } from './lora.js';

/**
 * How the next token is drawn. The defaults are llama.cpp's (common_params_sampling), applied natively; the
 * CLI's differ (`--temp 0.2 --repeat-penalty 1.1`, as Huozi's README).
 */
export interface SamplingOptions {
  /** Sampling temperature; 0 picks the most likely token (greedy). Default: 0.8. */
  temperature?: number;
  /** Keep the k most likely tokens; 0 turns it off. Default: 40. */
  topK?: number;
  /** Nucleus sampling threshold; 1 turns it off. Default: 0.95. */
  topP?: number;
  /** Drop tokens less likely than minP times the most likely one; 0 turns it off. Default: 0.05. */
  minP?: number;
  /** Penalty for repeated tokens (llama.cpp `--repeat-penalty`); 1 turns it off. Default: 1. */
  repeatPenalty?: number;
  /** How many recent tokens the penalties look at (llama.cpp `--repeat-last-n`). Default: 64. */
  repeatLastN?: number;
  /** OpenAI-style frequency penalty. Default: 0. */
  frequencyPenalty?: number;
  /** OpenAI-style presence penalty. Default: 0. */
  presencePenalty?: number;
  /**
   * Random seed (llama.cpp `--seed`), 0 to 2^32-2. Default: a random one. With a seed the same prompt and options
   * give the same tokens whatever the cache holds: the prompt is evaluated as a cold context would (cached whole
   * ubatches from position 0 are reused, or the very same prompt's kept logits; the rest is evaluated again).
   */
  seed?: number;
  /**
   * Constrain the answer to a GBNF grammar (llama.cpp's format, starting at rule `root`): text, compiled for this
   * call, or a {@link Grammar} compiled once and reused. Sampling draws as usual, then checks the drawn token
   * against the grammar and only if it is refused masks the vocabulary and draws again (as llama.cpp's common
   * sampler). A grammar that allows no token (it matches nothing more, or it is complete while `stopAtEog` is
   * false) rejects the result with {@link GrammarError}, carrying the partial result. At most one of `grammar`
   * and `jsonSchema`. Default: none.
   */
  grammar?: string | Grammar;
  /**
   * Constrain the answer to JSON that a JSON Schema describes ({@link Grammar.fromJsonSchema}; for many calls,
   * compile it once and pass the Grammar as `grammar`). Default: none.
   */
  jsonSchema?: object;
  /**
   * Token id → a bias added to its logit before sampling, from -100 to 100: -100 bans the token (its logit
   * becomes -Infinity, as OpenAI's `logit_bias`), 100 all but forces it. Applied first in the chain. Default: none.
   */
  logitBias?: Record<number, number> | ReadonlyMap<number, number>;
  /**
   * Report each generated token's logprob in `result.logprobs` and in {@link Generation.chunks}: the
   * log-softmax of the model's raw logits at that position, before the logit bias, penalties, temperature,
   * truncation and the grammar (vLLM's default `raw_logprobs`; what {@link Context.evaluate} returns). The
   * sampled token's own logprob is always there, also when it is not among the top alternatives.
   * Default: `false`.
   */
  logprobs?: boolean;
  /** How many most likely alternatives each token lists in `top` (0–20); implies `logprobs`. Default: 0. */
  topLogprobs?: number;
  /**
   * Report probabilities after the whole sampling chain instead (llama-server's `post_sampling_probs`): over the
   * candidates the draw chose among, after bias, penalties, truncation and temperature; greedy gives the chosen
   * token probability 1. Implies `logprobs`. Default: `false`.
   */
  postSamplingProbs?: boolean;
}

/** One generated token's logprob, with its most likely alternatives ({@link SamplingOptions.logprobs}). */
export interface TokenLogprob {
  token: number;
  /** The token's text (special tokens as their text; a piece of a UTF-8 character as U+FFFD). */
  text: string;
  /** The token's bytes. */
  bytes: number[];
  logprob: number;
  /** The `topLogprobs` most likely tokens at this position, most likely first. */
  top: { token: number; text: string; bytes: number[]; logprob: number }[];
}

/** What {@link Generation.chunks} yields: text, and the logprobs of the tokens sampled since the last chunk. */
export interface GenerationChunk {
  text: string;
  /** Only when logprobs were asked for; all chunks' lists together are `result.logprobs`. */
  logprobs?: TokenLogprob[];
}

/** Options of {@link Context.generate}. */
export interface GenerateOptions extends SamplingOptions {
  /** Most tokens to generate. Default: until the model ends or the context is full. */
  maxTokens?: number;
  /** Token ids that end generation (not included in the text). Default: none. */
  stopTokens?: readonly number[];
  /**
   * Strings that end generation; the text stops right before the first one. A string that is the text of a
   * special token (`<|endofutterance|>`) stops at that token. Default: none.
   */
  stopStrings?: readonly string[];
  /** Stop at the vocabulary's end-of-generation tokens (eos, eot). Default: `true`. */
  stopAtEog?: boolean;
  /** Keep the KV cache of the longest prefix shared with what the context holds. Default: `true`. */
  reuseCache?: boolean;
  /** For a string prompt: prepend BOS. Default: what the GGUF says. */
  addBos?: boolean;
  /** For a string prompt: parse special-token text into tokens. Default: `false`. */
  parseSpecial?: boolean;
  /** Stops generation; the text generated so far is kept in the error's `result`. */
  signal?: AbortSignal;
  /**
   * How often text reaches the iterator while generating, in milliseconds: at most once per interval, the text
   * generated in between joined into one chunk (each delivery wakes the JS thread, which then competes with the
   * compute threads for the cores). `0`: every token's text is a chunk of its own, handed over at once and
   * yielded on its own even when the loop is slower than the model (tokens that end no character, or that
   * could still be the start of a stop string, add their text to a later token's chunk). Integer, 0–60000.
   * Default: `16` (~60 chunks a second).
   */
  streamIntervalMs?: number;
  /**
   * LoRA adapters for this generation (of this model: {@link Model.loadLora}), each with its scale, instead of
   * the context's ({@link Context.setLoras}); `[]`: the base model. The cached prefix is reused only when it was
   * computed with the same adapters and scales. Default: the context's.
   */
  loras?: readonly LoraSetting[];
}

/** @internal The keys of SamplingOptions (ChatSession passes them through as they are). */
export const SAMPLING_OPTIONS = [
  'temperature', 'topK', 'topP', 'minP', 'repeatPenalty', 'repeatLastN', 'frequencyPenalty', 'presencePenalty', 'seed',
  'grammar', 'jsonSchema', 'logitBias', 'logprobs', 'topLogprobs', 'postSamplingProbs',
] as const satisfies readonly (keyof SamplingOptions)[];

/** @internal The keys of GenerateOptions: the sampling keys, then the rest. */
export const GENERATE_OPTIONS = [
  ...SAMPLING_OPTIONS, 'maxTokens', 'stopTokens', 'stopStrings', 'stopAtEog', 'reuseCache', 'addBos', 'parseSpecial', 'signal',
  'streamIntervalMs', 'loras',
] as const satisfies readonly (keyof GenerateOptions)[];

// Every option has its key in the list (a key missing there would be refused as unknown).
true satisfies Exclude<keyof SamplingOptions, (typeof SAMPLING_OPTIONS)[number]> extends never ? true : never;
true satisfies Exclude<keyof GenerateOptions, (typeof GENERATE_OPTIONS)[number]> extends never ? true : never;

/**
 * Why a generation ended: an end-of-generation token (`eog`), one of `stopTokens`, one of `stopStrings`,
 * `maxTokens`, a full context (`contextFull`), or a stop/abort (`abort`, reported through {@link AbortError}).
 */
export type StopReason = 'eog' | 'stopToken' | 'stopString' | 'maxTokens' | 'contextFull' | 'abort';

/** What {@link Generation.result} resolves to. */
export interface GenerationResult {
  /** The generated text (without the stop token or stop string). */
  text: string;
  /** Every sampled token id, including a final stop token. */
  tokens: number[];
  /** Why generation ended. */
  stopReason: StopReason;
  /** The token that stopped generation (stopReason `eog` or `stopToken`). */
  stopToken: number | null;
  /** The stop string that matched (stopReason `stopString`). */
  stopString: string | null;
  /** Prompt length in tokens. */
  promptTokens: number;
  /** Prompt tokens whose KV cache was reused from the context. */
  reusedTokens: number;
  /** Prompt tokens that were evaluated. */
  evaluatedTokens: number;
  /** Milliseconds spent on the prompt and on generating, and the speeds (tokens per second) they give. */
  timings: { promptMs: number; generateMs: number; promptTokensPerSecond: number; tokensPerSecond: number };
  /** One entry per token in `tokens`, when logprobs were asked for ({@link SamplingOptions.logprobs}). */
  logprobs?: TokenLogprob[];
}

/**
 * What the generation core reads of a model: a Model has all of it. Declared here so that this file, which the
 * contexts import, needs nothing of lib/model.ts (which imports the contexts).
 */
export interface GenerationModel {
  readonly vocabularySize: number;
  readonly specialTokens: ReadonlyMap<string, number>;
  minTokens(text: string): number;
  detokenize(tokens: ArrayLike<number>): string;
  tokenizeToArrayAsync(text: string, options: { addBos?: boolean; parseSpecial?: boolean }): Promise<Int32Array>;
}

/** @internal A generate() call, checked: see {@link prepareGeneration}. */
export interface PreparedGeneration<O extends GenerateOptions> {
  /** Checked token ids, or a text to tokenize with {@link promptTokens}. */
  prompt: string | Int32Array;
  params: NativeGenerateParams;
  o: Partial<O>;
  signal: AbortSignal | undefined;
  /** What the caller returns, to attach the outcome to. */
  generation: Generation;
}

/**
 * @internal Checks a generate() call's prompt and options and turns them into the native parameters
 * (shared by Context and ParallelContext). A token prompt comes back as checked ids; a text prompt comes back as
 * text, for the caller to tokenize off the event loop with {@link promptTokens}: here it is only refused when its
 * length in bytes shows that it cannot fit.
 */
export function prepareGeneration<O extends GenerateOptions>(
  model: GenerationModel,
  prompt: string | ArrayLike<number>,
  options: O | undefined,
  contextSize: number,
): PreparedGeneration<O> {
  const o = v.options<O>('options', options, GENERATE_OPTIONS);
  let checked: string | Int32Array;
  if (typeof prompt === 'string') {
    if (o.addBos !== undefined) v.boolean('addBos', o.addBos);
    if (o.parseSpecial !== undefined) v.boolean('parseSpecial', o.parseSpecial);
    // Cheap: every token covers at most the vocabulary's longest token text, so a text this long cannot fit.
    const least = model.minTokens(prompt);
    if (least > contextSize) {
      throw Object.assign(
        new RangeError(
          `Expected a prompt of at most contextSize (${contextSize}) tokens for prompt but received a text of ` +
            `${Buffer.byteLength(prompt, 'utf8')} bytes, at least ${least} tokens (no token of this vocabulary ` +
            'covers more bytes than its longest token text)',
        ),
        { code: 'ERR_OUT_OF_RANGE' },
      );
    }
    checked = prompt;
  } else {
    checked = checkPromptLength(v.tokens('prompt', prompt, model.vocabularySize), contextSize);
  }
  const params = nativeGenerateParams(o, model.vocabularySize);
  // Control tokens render no text, so a stop string naming one (`<|endofutterance|>`) could never match
  // the text; it stops at the token instead.
  const specialStops = params.stopStrings?.flatMap((s) => {
    const id = model.specialTokens.get(s);
    return id !== undefined && model.detokenize([id]) === '' ? [id] : [];
  });
  if (specialStops?.length) {
    params.stopTokens = Int32Array.from([...(params.stopTokens ?? []), ...specialStops]);
  }
  const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
  return { prompt: checked, params, o, signal, generation: new Generation(params.streamIntervalMs === 0) };
}

/**
 * @internal A text prompt's tokens, tokenized on a worker thread (the event loop stays free while earlier work
 * runs) with the call's addBos and parseSpecial, and checked against the context size.
 */
export async function promptTokens(
  model: GenerationModel,
  text: string,
  o: Pick<GenerateOptions, 'addBos' | 'parseSpecial'>,
  contextSize: number,
): Promise<Int32Array> {
  return checkPromptLength(await model.tokenizeToArrayAsync(text, { addBos: o.addBos, parseSpecial: o.parseSpecial }), contextSize);
}

/** @internal The error a stopped generation rejects with: an AbortError carrying what it produced. */
export function abortError<R extends GenerationResult>(result: R): AbortError & { result: R } {
  return Object.assign(new AbortError('Generation was aborted'), { result });
}

/**
 * @internal A native failure as its typed error; a grammar's dead end carries the partial result, converted as
 * a result is (`extra` adds the parallel context's fields).
 */
export function generationError(error: unknown, callSite: Error, promptTokens: number, extra?: object): Error {
  const typed = fromNative(error, callSite);
  const raw = (error as { result?: NativeGenerateResult }).result;
  if (raw && typeof raw === 'object') Object.assign(typed, { result: { ...toResult(raw, promptTokens), ...extra } });
  return typed;
}

/** @internal A prompt's tokens, checked against the context size (RangeError). */
export function checkPromptLength(ids: Int32Array, contextSize: number): Int32Array {
  if (ids.length === 0) throw v.rangeError('a prompt of at least one token', 'prompt', '0 tokens');
  if (ids.length > contextSize) {
    throw v.rangeError(`a prompt of at most contextSize (${contextSize}) tokens`, 'prompt', `${ids.length} tokens`);
  }
  return ids;
}

/** @internal The result of a generation that produced nothing (stopped while queued). */
export function emptyResult(stopReason: StopReason, promptTokens: number): GenerationResult {
  return toResult(
    {
      tokens: new Int32Array(0), text: '', stopReason, stopToken: null, stopString: null, reusedTokens: 0, evaluatedTokens: 0,
      promptMs: 0, generateMs: 0,
    },
    promptTokens,
  );
}

function nativeGenerateParams(o: Partial<GenerateOptions>, vocabularySize: number): NativeGenerateParams {
  const p: NativeGenerateParams = {};
  if (o.temperature !== undefined) p.temperature = v.number('temperature', o.temperature, 0, 100);
  if (o.topK !== undefined) p.topK = v.integer('topK', o.topK, 0, vocabularySize);
  if (o.topP !== undefined) p.topP = v.number('topP', o.topP, 0, 1);
  if (o.minP !== undefined) p.minP = v.number('minP', o.minP, 0, 1);
  if (o.repeatPenalty !== undefined) {
    p.repeatPenalty = v.number('repeatPenalty', o.repeatPenalty, Number.MIN_VALUE, 100, 'positive number up to 100');
  }
  if (o.repeatLastN !== undefined) p.repeatLastN = v.integer('repeatLastN', o.repeatLastN, 0, 1 << 24);
  if (o.frequencyPenalty !== undefined) p.frequencyPenalty = v.number('frequencyPenalty', o.frequencyPenalty, -100, 100);
  if (o.presencePenalty !== undefined) p.presencePenalty = v.number('presencePenalty', o.presencePenalty, -100, 100);
  // 2^32-1 is llama.cpp's "random seed" (LLAMA_DEFAULT_SEED): a caller who names a seed gets that seed.
  if (o.seed !== undefined) p.seed = v.integer('seed', o.seed, 0, 0xfffffffe);
  if (o.maxTokens !== undefined) p.maxTokens = v.integer('maxTokens', o.maxTokens, 0, 0x7fffffff);
  if (o.stopTokens !== undefined) p.stopTokens = v.tokens('stopTokens', o.stopTokens, vocabularySize);
  if (o.stopStrings !== undefined) p.stopStrings = v.stringArray('stopStrings', o.stopStrings).filter((s) => s.length > 0);
  if (o.stopAtEog !== undefined) p.stopAtEog = v.boolean('stopAtEog', o.stopAtEog);
  if (o.reuseCache !== undefined) p.reuseCache = v.boolean('reuseCache', o.reuseCache);
  if (o.streamIntervalMs !== undefined) p.streamIntervalMs = v.integer('streamIntervalMs', o.streamIntervalMs, 0, 60_000);
  if (o.grammar !== undefined && o.jsonSchema !== undefined) {
    throw Object.assign(new TypeError('Expected at most one of grammar and jsonSchema but received both'), { code: 'ERR_INVALID_ARG_TYPE' });
  }
  if (o.grammar !== undefined) {
    if (typeof o.grammar === 'string') p.grammar = nativeGrammar(Grammar.compile(o.grammar));
    else if (o.grammar instanceof Grammar) p.grammar = nativeGrammar(o.grammar);
    else throw v.typeError('a GBNF string or a Grammar', 'grammar', o.grammar);
  }
  if (o.jsonSchema !== undefined) {
    if (typeof o.jsonSchema !== 'object' || o.jsonSchema === null || Array.isArray(o.jsonSchema)) {
      throw v.typeError('a JSON Schema object', 'jsonSchema', o.jsonSchema);
    }
    p.grammar = nativeGrammar(Grammar.fromJsonSchema(o.jsonSchema));
  }
  if (o.logitBias !== undefined) p.logitBias = logitBias(o.logitBias, vocabularySize);
  const logprobs = o.logprobs === undefined ? undefined : v.boolean('logprobs', o.logprobs);
  const top = o.topLogprobs === undefined ? undefined : v.integer('topLogprobs', o.topLogprobs, 0, 20);
  const post = o.postSamplingProbs === undefined ? undefined : v.boolean('postSamplingProbs', o.postSamplingProbs);
  if (logprobs || top !== undefined || post) {
    p.topLogprobs = top ?? 0;
    if (post) p.postSamplingProbs = true;
  }
  return p;
}

function logitBias(value: unknown, vocabularySize: number): NonNullable<NativeGenerateParams['logitBias']> {
  let entries: [unknown, unknown][];
  if (value instanceof Map) entries = [...value.entries()];
  else if (typeof value === 'object' && value !== null && !Array.isArray(value)) entries = Object.entries(value);
  else throw v.typeError('an object or a Map of token id to bias', 'logitBias', value);
  const tokens = new Int32Array(entries.length);
  const biases = new Float32Array(entries.length);
  entries.forEach(([key, bias], i) => {
    const id = typeof key === 'string' && /^\d+$/.test(key) ? Number(key) : key;
    tokens[i] = v.integer(`logitBias key ${String(key)}`, id, 0, vocabularySize - 1);
    const b = v.number(`logitBias[${String(key)}]`, bias, -100, 100);
    biases[i] = b === -100 ? -Infinity : b;
  });
  return { tokens, biases };
}

/** @internal */
export function toResult(raw: NativeGenerateResult, promptTokens: number): GenerationResult {
  const generated = raw.tokens.length;
  return {
    text: raw.text,
    tokens: Array.from(raw.tokens),
    stopReason: raw.stopReason,
    stopToken: raw.stopToken,
    stopString: raw.stopString,
    promptTokens,
    reusedTokens: raw.reusedTokens,
    evaluatedTokens: raw.evaluatedTokens,
    timings: {
      promptMs: raw.promptMs,
      generateMs: raw.generateMs,
      promptTokensPerSecond: raw.promptMs > 0 ? (raw.evaluatedTokens * 1000) / raw.promptMs : 0,
      tokensPerSecond: raw.generateMs > 0 ? (generated * 1000) / raw.generateMs : 0,
    },
    ...(raw.logprobs ? { logprobs: raw.logprobs } : {}),
  };
}

/**
 * A running generation: an async iterable of text chunks (each ends on a whole character), and the final
 * {@link GenerationResult}. Breaking out of the iteration stops the generation.
 */
export class Generation implements AsyncIterable<string> {
  /** Resolves when generation ends; rejects with AbortError (carrying `.result`) or another typed error. */
  readonly result: Promise<GenerationResult>;
  #resolveResult!: (r: Promise<GenerationResult>) => void;
  #chunks: GenerationChunk[] = [];
  #waiter: (() => void) | undefined;
  #ended = false;
  #stop: () => void = () => {};
  #iterated = false;
  readonly #perToken: boolean;

  /** @internal `perToken` (streamIntervalMs 0): yield every delivered chunk on its own, never joined. */
  constructor(perToken = false) {
    this.#perToken = perToken;
    this.result = new Promise((resolve) => (this.#resolveResult = resolve));
  }

  /** @internal */
  push(text: string, logprobs?: NativeTokenLogprob[]): void {
    this.#chunks.push(logprobs ? { text, logprobs } : { text });
    this.#wake();
  }

  /** @internal */
  attach(result: Promise<GenerationResult>, stop: () => void): void {
    this.#stop = stop;
    this.#resolveResult(result);
    const end = () => {
      this.#ended = true;
      this.#wake();
    };
    result.then(end, end);
    // Whoever only iterates sees the error there; do not also report it as unhandled.
    this.result.catch(() => undefined);
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.();
  }

  /** The whole text, once generation ends. */
  async text(): Promise<string> {
    return (await this.result).text;
  }

  /** Stops the generation (the result then rejects with AbortError, keeping the partial text). */
  stop(): void {
    this.#stop();
  }

  /** Text chunks as they are generated (each ends on a whole character). A Generation can be iterated once. */
  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    yield* this.#drain((batch) => {
      const texts = batch.filter((c) => c.text !== '').map((c) => c.text);
      if (this.#perToken) return texts;
      return texts.length === 0 ? [] : [texts.length === 1 ? texts[0] : texts.join('')];
    });
  }

  /**
   * The chunks with their tokens' logprobs (when asked for): each chunk carries the entries of the tokens sampled
   * since the previous one (a token whose text is still held back, such as a piece of a character, sends its
   * entry before its text), so all chunks together hold exactly `result.logprobs`. Like the text iterator
   * (which it replaces: a Generation is iterated once, either way).
   */
  chunks(): AsyncIterable<GenerationChunk> {
    return {
      [Symbol.asyncIterator]: () =>
        this.#drain((batch) => {
          const useful = batch.filter((c) => c.text !== '' || (c.logprobs?.length ?? 0) > 0);
          if (this.#perToken || useful.length <= 1) return useful;
          const text = useful.map((c) => c.text).join('');
          return [useful[0].logprobs ? { text, logprobs: useful.flatMap((c) => c.logprobs ?? []) } : { text }];
        }),
    };
  }

  async *#drain<T>(shape: (batch: GenerationChunk[]) => T[]): AsyncGenerator<T> {
    if (this.#iterated) throw new TypeError('A Generation can be iterated only once');
    this.#iterated = true;
    let finished = false;
    try {
      for (;;) {
        if (this.#chunks.length > 0) {
          const batch = this.#chunks;
          this.#chunks = [];
          yield* shape(batch);
          continue;
        }
        if (this.#ended) break;
        await new Promise<void>((resolve) => (this.#waiter = resolve));
      }
      await this.result; // surfaces an error to the iterating code
      finished = true;
    } finally {
      if (!finished && !this.#ended) {
        this.#stop();
        await this.result.catch(() => undefined);
      }
    }
  }
}
