import type { NativeContext, NativeGenerateResult } from './binding.js';
import { freemem } from 'node:os';
import { AbortError, DisposedError, fromNative, InsufficientMemoryError } from './errors.js';
import { defaultThreads, type Model } from './model.js';
import * as v from './validate.js';

/** Options of {@link Model.createContext}. */
export interface ContextOptions {
  /** Tokens the context holds (llama.cpp `-c`). Default: the model's training context, at most 4096. */
  contextSize?: number;
  /** Most tokens submitted to one llama_decode (llama.cpp `-b`). Default: `min(2048, contextSize)`. */
  batchSize?: number;
  /** Physical batch size (llama.cpp `-ub`). Default: `min(512, batchSize)`. */
  ubatchSize?: number;
  /** CPU threads for generation (llama.cpp `-t`). Default: the cores available to this process. */
  threads?: number;
  /** CPU threads for prompt processing (llama.cpp `-tb`). Default: `threads`. */
  batchThreads?: number;
  /** Flash attention (llama.cpp `-fa`): `'auto'`, `true` or `false`. Default: `'auto'`. */
  flashAttention?: boolean | 'auto';
  /** Collect importance-matrix statistics while evaluating (see computeImatrix). Default: `false`. */
  collectImatrix?: boolean;
}

const CONTEXT_OPTIONS = ['contextSize', 'batchSize', 'ubatchSize', 'threads', 'batchThreads', 'flashAttention', 'collectImatrix'] as const;

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

/** @internal */
export const GENERATE_OPTIONS = [
  'temperature', 'topK', 'topP', 'minP', 'repeatPenalty', 'repeatLastN', 'frequencyPenalty', 'presencePenalty',
  'seed', 'maxTokens', 'stopTokens', 'stopStrings', 'stopAtEog', 'reuseCache', 'addBos', 'parseSpecial', 'signal',
  'streamIntervalMs',
] as const;

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

/** Options of {@link Context.evaluate}. */
export interface EvaluateOptions {
  /**
   * Which logits to return: of the last token (default), of every token, or none. `'computeAll'` computes
   * every position's logits without returning them (every layer then runs on every token, which an
   * importance matrix needs; with 'none' llama.cpp skips the last layer's rows that are not outputs).
   */
  logits?: 'last' | 'all' | 'none' | 'computeAll';
  /** Stops the evaluation; the promise then rejects with {@link AbortError}. */
  signal?: AbortSignal;
}

/** Memory llama.cpp allocated, per device, measured from a live context (see {@link Context.memory}). */
export interface DeviceMemoryUse {
  /** The device's name (`CUDA0`, `Metal`, `RPC0[127.0.0.1:50052]`...) or `host` for CPU-side buffers. */
  device: string;
  /** Bytes of the model's weights on this device. */
  model: number;
  /** Bytes of this context's KV cache on this device. */
  context: number;
  /** Bytes of this context's compute buffers on this device. */
  compute: number;
  /** model + context + compute. */
  total: number;
}

/** @internal */
export function memoryUse(raw: { device: string; model: number; context: number; compute: number }[]): DeviceMemoryUse[] {
  return raw.map((d) => ({ ...d, total: d.model + d.context + d.compute }));
}

/** Bytes of an f16 KV cache of `contextSize` tokens (llama.cpp's default cache types). */
export function kvCacheBytes(model: Model, contextSize: number): number {
  const { layers, heads, kvHeads, embeddingSize } = model.info;
  const arch = model.metadata['general.architecture'];
  const keyLength = Number(model.metadata[`${arch}.attention.key_length`] ?? embeddingSize / Math.max(1, heads));
  const valueLength = Number(model.metadata[`${arch}.attention.value_length`] ?? keyLength);
  return contextSize * layers * kvHeads * (keyLength + valueLength) * 2;
}

/** @internal */
export async function createContext(model: Model, options?: ContextOptions): Promise<Context> {
  const o = v.options<ContextOptions>('options', options, CONTEXT_OPTIONS);
  const contextSize =
    o.contextSize === undefined ? Math.min(model.info.trainContextSize || 4096, 4096) : v.integer('contextSize', o.contextSize, 1, 1 << 24);
  const batchSize = o.batchSize === undefined ? Math.min(2048, contextSize) : v.integer('batchSize', o.batchSize, 1, 1 << 24);
  if (batchSize > contextSize) {
    throw v.rangeError(`positive integer no larger than contextSize (${contextSize})`, 'batchSize', batchSize);
  }
  // A non-causal model (attention.causal = false) must see each batch in one ubatch: llama_decode asserts it.
  const arch = model.metadata['general.architecture'];
  const causal = model.metadata[`${arch}.attention.causal`] !== 'false';
  const ubatchSize =
    o.ubatchSize === undefined ? (causal ? Math.min(512, batchSize) : batchSize) : v.integer('ubatchSize', o.ubatchSize, 1, 1 << 24);
  if (!causal && ubatchSize !== batchSize) {
    throw v.rangeError(`ubatchSize equal to batchSize (${batchSize}) for this non-causal model`, 'ubatchSize', ubatchSize);
  }
  if (ubatchSize > batchSize) {
    throw v.rangeError(`positive integer no larger than batchSize (${batchSize})`, 'ubatchSize', ubatchSize);
  }
  const threads = o.threads === undefined ? defaultThreads() : v.integer('threads', o.threads, 1, 512);
  const batchThreads = o.batchThreads === undefined ? threads : v.integer('batchThreads', o.batchThreads, 1, 512);
  const fa = o.flashAttention === undefined ? 'auto' : v.oneOf('flashAttention', o.flashAttention, ['auto', true, false] as const);
  const collectImatrix = o.collectImatrix === undefined ? false : v.boolean('collectImatrix', o.collectImatrix);
  // llama.cpp allocates the KV cache with malloc and then clears it: under Linux's overcommit a size far
  // beyond memory does not fail cleanly, the OOM killer ends the process. Refuse it here.
  if (!model.systemInfo.gpuOffload) {
    const kv = kvCacheBytes(model, contextSize);
    const free = freemem();
    if (kv > free) {
      throw new InsufficientMemoryError(
        `A context of ${contextSize} tokens needs ${(kv / 2 ** 30).toFixed(2)} GiB for its KV cache, but only ` +
          `${(free / 2 ** 30).toFixed(2)} GiB of memory is available`,
      );
    }
  }
  const callSite = new Error();
  try {
    const native = await model.native.createContext({
      contextSize, batchSize, ubatchSize, threads, batchThreads, flashAttention: fa === 'auto' ? -1 : fa ? 1 : 0, collectImatrix,
    });
    return new Context(model, native);
  } catch (error) {
    throw fromNative(error, callSite);
  }
}

/**
 * An inference context: a KV cache holding one sequence of tokens, and the compute to extend it. Operations
 * run one at a time, in the order they were called.
 */
export class Context {
  /** The model this context runs (kept alive while the context is). */
  readonly model: Model;
  /** Tokens the KV cache holds (as llama.cpp allocated it). */
  readonly contextSize: number;
  /** Logical batch size (`-b`). */
  readonly batchSize: number;
  /** Physical batch size (`-ub`). */
  readonly ubatchSize: number;
  /** Threads for generation. */
  readonly threads: number;
  /** Threads for prompt processing. */
  readonly batchThreads: number;

  #native: NativeContext | undefined;
  #tail: Promise<unknown> = Promise.resolve();
  readonly #disposeListeners = new Set<() => void>();

  /** @internal Use {@link Model.createContext}. */
  constructor(model: Model, native: NativeContext) {
    this.model = model;
    this.#native = native;
    const info = native.info();
    this.contextSize = info.contextSize;
    this.batchSize = info.batchSize;
    this.ubatchSize = info.ubatchSize;
    this.threads = info.threads;
    this.batchThreads = info.batchThreads;
  }

  /** Whether {@link Context.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  #alive(): NativeContext {
    if (!this.#native) throw new DisposedError('This context has been disposed');
    return this.#native;
  }

  /**
   * The tokens whose keys and values the context holds, in order. Throws a BusyError while an operation
   * runs (the list is changing); read it between operations.
   */
  get tokens(): number[] {
    try {
      return Array.from(this.#alive().tokens());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * Queues `run` after every earlier operation. Aborting one of `signals` while the operation is queued removes
   * it from the queue at once (it rejects with `queuedAbort()`, nothing else is touched); while it runs, it asks
   * the native side to stop this operation. `evaluates`: the operation runs the model, so the model file is
   * checked first (Model.checkFile).
   */
  #enqueue<T>(
    signals: (AbortSignal | undefined)[],
    run: (native: NativeContext) => Promise<T>,
    { evaluates = false, queuedAbort = () => new AbortError() }: { evaluates?: boolean; queuedAbort?: () => Error } = {},
  ): Promise<T> {
    const active = signals.filter((s): s is AbortSignal => s !== undefined);
    let state: 'queued' | 'running' | 'done' = 'queued';
    let runningOn: NativeContext | undefined;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (state === 'queued') {
          state = 'done';
          detach();
          reject(queuedAbort());
        } else if (state === 'running') {
          runningOn?.abort();
        }
      };
      const detach = () => {
        for (const s of active) s.removeEventListener('abort', onAbort);
      };
      for (const s of active) s.addEventListener('abort', onAbort, { once: true });
      const start = async () => {
        if (state !== 'queued') return; // removed from the queue while it waited
        state = 'running';
        try {
          const native = this.#alive();
          if (active.some((s) => s.aborted)) throw queuedAbort();
          if (evaluates) this.model.checkFile();
          runningOn = native;
          resolve(await run(native));
        } catch (error) {
          reject(error);
        } finally {
          state = 'done';
          runningOn = undefined;
          detach();
        }
      };
      if (active.some((s) => s.aborted)) {
        onAbort();
        return;
      }
      // `start` never rejects, so the queue's tail never does either.
      this.#tail = this.#tail.then(start);
    });
  }

  /**
   * Appends tokens to the context and evaluates them. Resolves to the logits asked for: a Float32Array of
   * `vocabularySize` (last) or `tokens.length * vocabularySize` (all) values, or undefined (none).
   */
  evaluate(tokens: ArrayLike<number>, options?: EvaluateOptions): Promise<Float32Array | undefined> {
    this.#alive();
    const ids = v.tokens('tokens', tokens, this.model.vocabularySize);
    if (ids.length === 0) throw v.rangeError('at least one token', 'tokens', tokens);
    const o = v.options<EvaluateOptions>('options', options, ['logits', 'signal']);
    const logits = o.logits === undefined ? 'last' : v.oneOf('logits', o.logits, ['last', 'all', 'none', 'computeAll'] as const);
    const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
    const callSite = new Error();
    return this.#enqueue(
      [signal],
      async (native) => {
        try {
          return await native.evaluate(ids, ({ none: 0, last: 1, all: 2, computeAll: 3 } as const)[logits]);
        } catch (error) {
          throw fromNative(error, callSite);
        }
      },
      { evaluates: true },
    );
  }

  /**
   * Generates from a prompt (text or token ids). Iterate the returned {@link Generation} for text chunks as
   * they come, or await `generation.result` (or `generation.text()`) for the whole answer.
   *
   * Throws at once (`TypeError`/`RangeError`) for bad options, an empty prompt or one longer than the context,
   * and {@link DisposedError} after dispose(); failures while generating reject `result` ({@link DecodeError},
   * {@link AbortError} with the partial `result`).
   */
  generate(prompt: string | ArrayLike<number>, options?: GenerateOptions): Generation {
    this.#alive();
    const { prompt: prepared, params, o } = prepareGeneration(this.model, prompt, options, this.contextSize, GENERATE_OPTIONS);
    const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
    const callSite = new Error();
    const generation = new Generation(params.streamIntervalMs === 0);
    // stop() (or breaking out of the iteration) ends this generation only: queued, it leaves the queue at once;
    // running, it stops at the next token. It never touches another operation of the context.
    const stopper = new AbortController();
    let promptTokens = typeof prepared === 'string' ? 0 : prepared.length;
    const aborted = () =>
      Object.assign(new AbortError('Generation was aborted'), { result: emptyResult('abort', promptTokens) });
    // A text prompt is tokenized on a worker thread, while earlier operations run.
    const tokens = typeof prepared === 'string' ? this.model.tokenizeToArrayAsync(prepared, { addBos: o.addBos, parseSpecial: o.parseSpecial }) : undefined;
    tokens?.catch(() => undefined);
    const result = this.#enqueue(
      [signal, stopper.signal],
      async (native) => {
        const ids = tokens ? checkPromptLength(await tokens, this.contextSize) : (prepared as Int32Array);
        promptTokens = ids.length;
        if (stopper.signal.aborted || signal?.aborted) throw aborted();
        this.model.checkFile();
        let raw: NativeGenerateResult;
        try {
          raw = await native.generate(ids, params, (text) => generation.push(text));
        } catch (error) {
          throw fromNative(error, callSite);
        }
        const out = toResult(raw, ids.length);
        if (raw.stopReason === 'abort') {
          throw Object.assign(new AbortError('Generation was aborted'), { result: out });
        }
        return out;
      },
      { queuedAbort: aborted },
    );
    generation.attach(result, () => stopper.abort());
    return generation;
  }

  /** Forgets the cached tokens from `position` on (0 empties the context). */
  async eraseFrom(position: number): Promise<void> {
    v.integer('position', position, 0);
    await this.#enqueue([], async (native) => native.eraseFrom(position));
  }

  /** @internal The KV cache of the sequence and its tokens (for ChatSession.save). */
  saveState(): Promise<{ data: Buffer; tokens: number[] }> {
    this.#alive();
    const callSite = new Error();
    return this.#enqueue([], async (native) => {
      try {
        const { data, tokens } = await native.saveState();
        return { data, tokens: Array.from(tokens) };
      } catch (error) {
        throw fromNative(error, callSite);
      }
    });
  }

  /** @internal Restores what saveState() returned (checked by the caller). */
  loadState(data: Buffer, tokens: readonly number[]): Promise<void> {
    this.#alive();
    const ids = v.tokens('tokens', tokens, this.model.vocabularySize);
    const callSite = new Error();
    return this.#enqueue([], async (native) => {
      try {
        await native.loadState(data, ids);
      } catch (error) {
        throw fromNative(error, callSite);
      }
    });
  }

  /** @internal Importance-matrix sums collected so far (collectImatrix contexts). */
  imatrix(): { name: string; values: Float32Array; counts: Float32Array }[] {
    try {
      return this.#alive().imatrix();
    } catch (error) {
      throw fromNative(error);
    }
  }

  /**
   * What llama.cpp allocated for this context and its model, per device, measured (not estimated): the
   * weights, the KV cache and the compute buffers. Compare with {@link estimateMemory}, which predicts it
   * before loading.
   */
  memory(): DeviceMemoryUse[] {
    try {
      return memoryUse(this.#alive().memory());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Empties the context. */
  clear(): Promise<void> {
    return this.eraseFrom(0);
  }

  /** Runs `listener` once when the context is disposed. */
  onDispose(listener: () => void): void {
    this.#disposeListeners.add(listener);
  }

  /** Stops what is running, waits for it to end, and frees the context. Safe to call twice. */
  async dispose(): Promise<void> {
    const native = this.#native;
    if (!native) return;
    this.#native = undefined;
    // Native dispose aborts a running operation and frees the context as soon as it ends.
    native.dispose();
    await this.#tail;
    for (const listener of this.#disposeListeners) listener();
    this.#disposeListeners.clear();
  }

  /** `await using context = await model.createContext()` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/**
 * @internal Checks a generate() call's prompt and options and turns them into the native parameters
 * (shared by Context and ParallelContext). A token prompt comes back as checked ids; a text prompt comes back as
 * text, for the caller to tokenize off the event loop (Model.tokenizeToArrayAsync) and check with
 * {@link checkPromptLength}: here it is only refused when its length in bytes shows that it cannot fit.
 */
export function prepareGeneration<O extends GenerateOptions>(
  model: Model,
  prompt: string | ArrayLike<number>,
  options: O | undefined,
  contextSize: number,
  allowed: readonly string[],
): { prompt: string | Int32Array; params: Record<string, unknown>; o: Partial<O> } {
  const o = v.options<O>('options', options, allowed as readonly (keyof O & string)[]);
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
  const specialStops = (params.stopStrings as string[] | undefined)?.flatMap((s) => {
    const id = model.specialTokens.get(s);
    return id !== undefined && model.native.detokenize(Int32Array.of(id), false, false) === '' ? [id] : [];
  });
  if (specialStops?.length) {
    params.stopTokens = Int32Array.from([...((params.stopTokens as Int32Array | undefined) ?? []), ...specialStops]);
  }
  return { prompt: checked, params, o };
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

function nativeGenerateParams(o: Partial<GenerateOptions>, vocabularySize: number): Record<string, unknown> {
  const p: Record<string, unknown> = {};
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
