// The one generation core, under Context.generate, ParallelContext.generate and ChatSession: the options and
// their checks, the native parameters, the result, and the Generation a caller iterates.
import type { NativeGenerateParams, NativeGenerateResult } from './binding.js';
import { AbortError } from './errors.js';
import * as v from './validate.js';

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
}

/** @internal The keys of SamplingOptions (ChatSession passes them through as they are). */
export const SAMPLING_OPTIONS = [
  'temperature', 'topK', 'topP', 'minP', 'repeatPenalty', 'repeatLastN', 'frequencyPenalty', 'presencePenalty', 'seed',
] as const satisfies readonly (keyof SamplingOptions)[];

/** @internal The keys of GenerateOptions: the sampling keys, then the rest. */
export const GENERATE_OPTIONS = [
  ...SAMPLING_OPTIONS, 'maxTokens', 'stopTokens', 'stopStrings', 'stopAtEog', 'reuseCache', 'addBos', 'parseSpecial', 'signal',
  'streamIntervalMs',
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
  return p;
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
  #chunks: string[] = [];
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
  push(text: string): void {
    this.#chunks.push(text);
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
    if (this.#iterated) throw new TypeError('A Generation can be iterated only once');
    this.#iterated = true;
    let finished = false;
    try {
      for (;;) {
        if (this.#chunks.length > 0) {
          const batch = this.#chunks;
          this.#chunks = [];
          if (this.#perToken) yield* batch;
          else yield batch.length === 1 ? batch[0] : batch.join('');
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
