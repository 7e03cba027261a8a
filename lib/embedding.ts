// Embeddings: EmbeddingContext (src/embedding.cc) and its options. Inputs are checked and tokenized here, then
// packed natively into as few llama_decode calls as llama-embedding would make (each input its own sequence).
import { freemem } from 'node:os';
import { binding, type NativeEmbeddingContext, type NativeEmbeddingParams } from './binding.js';
import type { ContextModel } from './context-options.js';
import { AbortError, fromNative, InsufficientMemoryError } from './errors.js';
import { Lifecycle, nativeModel } from './lifecycle.js';
import { kvCacheBytes, memoryUse, type DeviceMemoryUse } from './memory.js';
import type { Model } from './model.js';
import { defaultThreads } from './system.js';
import * as v from './validate.js';

/** How a sequence's token embeddings become one vector (llama.cpp `--pooling`); `'none'` keeps one per token. */
export type Pooling = 'mean' | 'cls' | 'last' | 'none';

/** One input: a text, or its token ids (checked against the vocabulary). */
export type EmbeddingInput = string | ArrayLike<number>;

/** Options of {@link Model.createEmbeddingContext}. */
export interface EmbeddingContextOptions {
  /**
   * Pooling (llama.cpp `--pooling`): `'mean'`, `'cls'` (the first token's), `'last'` (the last token's), `'none'`
   * (one embedding per token), or `'model'`: the GGUF's `<arch>.pooling_type` when it names mean, cls or last,
   * else mean. Default: `'model'`. A GGUF whose pooling is rank (a reranker) needs an explicit choice.
   */
  pooling?: Pooling | 'model';
  /** Scale every embedding to unit length (L2; llama-embedding's `--embd-normalize 2`, its default). Default: `true`. */
  normalize?: boolean;
  /** The most tokens one input may have. Default: the model's training context, at most 2048. */
  contextSize?: number;
  /**
   * The most tokens computed in one llama_decode (and one ubatch, as llama-server requires for embeddings):
   * inputs are packed, each as its own sequence, until the next would not fit. At least `contextSize`; the
   * KV cache holds this many tokens. Default: `contextSize`.
   */
  batchSize?: number;
  /** CPU threads. Default: the cores available to this process (one less when a GPU holds weights). */
  threads?: number;
  /** Flash attention: `'auto'`, `true` or `false`. Default: `'auto'`. */
  flashAttention?: boolean | 'auto';
}

const OPTIONS = ['pooling', 'normalize', 'contextSize', 'batchSize', 'threads', 'flashAttention'] as const satisfies readonly (keyof EmbeddingContextOptions)[];
true satisfies Exclude<keyof EmbeddingContextOptions, (typeof OPTIONS)[number]> extends never ? true : never;

/** Options of {@link EmbeddingContext.embed}. */
export interface EmbedOptions {
  /** Stops the call: queued, it leaves the queue at once; running, it stops at the next decode. Rejects with {@link AbortError}. */
  signal?: AbortSignal;
}

/** What {@link EmbeddingContext.embedWithUsage} resolves to. */
export interface EmbeddingResult<E> {
  /** One per input, in order. */
  embeddings: E[];
  /** Each input's tokens (a text's after tokenization, with BOS as the model adds it). */
  tokenCounts: number[];
  /** All inputs' tokens: what was computed. */
  promptTokens: number;
}

/** One call's output is at most this many bytes (pooling 'none' on long inputs grows fast): larger calls are refused. */
export const MAX_EMBED_OUTPUT_BYTES = 2 ** 30;

const POOLING_IDS = { none: 0, mean: 1, cls: 2, last: 3 } as const;
const POOLING_NAMES = ['none', 'mean', 'cls', 'last'] as const;

/** The GGUF's own pooling (`<arch>.pooling_type`): 'rank' for a reranker, undefined when it names none or unknown. */
function ggufPooling(model: Pick<Model, 'metadata'>): Pooling | 'rank' | undefined {
  const arch = model.metadata['general.architecture'];
  const raw = model.metadata[`${arch}.pooling_type`];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (n === 4) return 'rank';
  return n >= 0 && n <= 3 ? POOLING_NAMES[n] : undefined;
}

/** @internal What checkEmbeddingOptions makes of the options. */
export interface EmbeddingPlan {
  params: NativeEmbeddingParams;
  pooling: Pooling;
  contextSize: number;
  normalize: boolean;
}

/** @internal Checks the options of an embedding context on `model` (TypeError/RangeError naming the option). */
export function checkEmbeddingOptions(model: Pick<Model, 'metadata' | 'info' | 'offloaded'>, options: unknown): EmbeddingPlan {
  const o = v.options<EmbeddingContextOptions>('options', options, OPTIONS);
  const asked = o.pooling === undefined ? 'model' : v.oneOf('pooling', o.pooling, ['model', 'mean', 'cls', 'last', 'none'] as const);
  let pooling: Pooling;
  if (asked === 'model') {
    const own = ggufPooling(model);
    if (own === 'rank') {
      throw v.rangeError("'mean', 'cls', 'last' or 'none' (this GGUF's pooling is rank: a reranker, not an embedding model)", 'pooling', asked);
    }
    // Token-level output only when asked for by name (its results have another shape).
    pooling = own === undefined || own === 'none' ? 'mean' : own;
  } else {
    pooling = asked;
  }
  const normalize = o.normalize === undefined ? true : v.boolean('normalize', o.normalize);
  const contextSize = o.contextSize === undefined
    ? Math.min(model.info.trainContextSize || 2048, 2048)
    : v.integer('contextSize', o.contextSize, 1, 1 << 24);
  const batchSize = o.batchSize === undefined ? contextSize : v.integer('batchSize', o.batchSize, 1, 1 << 24);
  if (batchSize < contextSize) {
    throw v.rangeError(`integer at least contextSize (${contextSize}): an input of contextSize tokens must fit one batch`, 'batchSize', batchSize);
  }
  const threads = o.threads === undefined ? defaultThreads(model.offloaded) : v.integer('threads', o.threads, 1, 512);
  const fa = o.flashAttention === undefined ? 'auto' : v.oneOf('flashAttention', o.flashAttention, ['auto', true, false] as const);
  const params: NativeEmbeddingParams = {
    contextSize: batchSize, batchSize, ubatchSize: batchSize, threads, batchThreads: threads,
    flashAttention: fa === 'auto' ? -1 : fa ? 1 : 0, pooling: POOLING_IDS[pooling],
  };
  return { params, pooling, contextSize, normalize };
}

/** @internal */
export async function createEmbeddingContext<E extends Float32Array | Float32Array[]>(
  model: Model,
  options?: EmbeddingContextOptions,
): Promise<EmbeddingContext<E>> {
  const { params, contextSize, normalize } = checkEmbeddingOptions(model, options);
  // As for the other contexts: a KV cache beyond free memory would meet the OOM killer, not a clean failure.
  if (!model.systemInfo.gpuOffload) {
    const kv = kvCacheBytes(model as ContextModel, params.batchSize);
    const free = freemem();
    if (kv > free) {
      throw new InsufficientMemoryError(
        `An embedding context of ${params.batchSize} tokens needs ${(kv / 2 ** 30).toFixed(2)} GiB for its KV cache, but only ` +
          `${(free / 2 ** 30).toFixed(2)} GiB of memory is available`,
      );
    }
  }
  const callSite = new Error();
  try {
    const native = await binding().createEmbeddingContext(nativeModel(model), params);
    return new EmbeddingContext<E>(model, native, { contextSize, normalize });
  } catch (error) {
    throw fromNative(error, callSite);
  }
}

/** Whether `x` is one list of token ids (an array of numbers, or a typed array), rather than a list of inputs. */
function isTokenList(x: unknown): boolean {
  if (ArrayBuffer.isView(x)) return !(x instanceof DataView);
  return Array.isArray(x) && x.length > 0 && x.every((t) => typeof t === 'number' || typeof t === 'bigint');
}

/**
 * An embedding context: turns texts (or token ids) into vectors with llama.cpp, many inputs per decode. One call
 * runs at a time; later calls wait in order. `E` is `Float32Array` (pooled) or `Float32Array[]` (pooling 'none':
 * one row per token, each a view into one buffer per input).
 */
export class EmbeddingContext<E extends Float32Array | Float32Array[] = Float32Array | Float32Array[]> {
  /** The model this context runs. */
  readonly model: Model;
  /** The pooling in use (`'model'` resolved). */
  readonly pooling: Pooling;
  /** Whether embeddings are scaled to unit length. */
  readonly normalize: boolean;
  /** Length of each embedding (llama.cpp `n_embd_out`). */
  readonly dimension: number;
  /** The most tokens one input may have. */
  readonly contextSize: number;
  /** The most tokens computed in one decode. */
  readonly batchSize: number;
  /** CPU threads. */
  readonly threads: number;

  readonly #life: Lifecycle<NativeEmbeddingContext>;
  #tail: Promise<unknown> = Promise.resolve();

  /** @internal Use {@link Model.createEmbeddingContext}. */
  constructor(model: Model, native: NativeEmbeddingContext, settings: { contextSize: number; normalize: boolean }) {
    this.model = model;
    this.#life = new Lifecycle(native, 'This embedding context has been disposed');
    const info = native.info();
    this.pooling = POOLING_NAMES[info.pooling];
    this.dimension = info.dimension;
    this.batchSize = info.batchSize;
    this.threads = info.threads;
    this.contextSize = settings.contextSize;
    this.normalize = settings.normalize;
  }

  /** Whether {@link EmbeddingContext.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#life.disposed;
  }

  /**
   * The embedding of one input (a text, or token ids), or of each of a list of inputs. Texts are tokenized as
   * the model says (BOS added when the GGUF asks for it; special-token text stays text). An empty input, one
   * longer than `contextSize` tokens, or token ids outside the vocabulary are refused (`RangeError`) before
   * anything runs; `[]` resolves to `[]`.
   */
  embed(input: EmbeddingInput, options?: EmbedOptions): Promise<E>;
  embed(inputs: readonly EmbeddingInput[], options?: EmbedOptions): Promise<E[]>;
  async embed(input: EmbeddingInput | readonly EmbeddingInput[], options?: EmbedOptions): Promise<E | E[]> {
    const single = typeof input === 'string' || isTokenList(input);
    const { embeddings } = await this.embedWithUsage(single ? [input as EmbeddingInput] : (input as readonly EmbeddingInput[]), options);
    return single ? embeddings[0] : embeddings;
  }

  /** Like {@link EmbeddingContext.embed} for a list of inputs, with the token counts (usage). */
  async embedWithUsage(inputs: readonly EmbeddingInput[], options?: EmbedOptions): Promise<EmbeddingResult<E>> {
    this.#life.alive();
    if (!Array.isArray(inputs)) throw v.typeError('a string, an array of token ids, or an array of those', 'inputs', inputs);
    const o = v.options<EmbedOptions>('options', options, ['signal']);
    const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
    const model = this.model;
    // Everything that can be checked without tokenizing, for every input, before anything is queued.
    const tokenArrays = inputs.map((x, i) => {
      const name = `inputs[${i}]`;
      if (typeof x === 'string') {
        if (x.length === 0) throw v.rangeError('a non-empty string (an embedding needs at least one token)', name, x);
        if (model.minTokens(x) > this.contextSize) throw this.#tooLong(name, model.minTokens(x), 'at least ');
        return undefined;
      }
      if (!isTokenList(x) && !(Array.isArray(x) && x.length === 0)) throw v.typeError('a string or an array of token ids', name, x);
      const ids = v.tokens(name, x, model.vocabularySize);
      if (ids.length === 0) throw v.rangeError('at least one token id', name, x);
      if (ids.length > this.contextSize) throw this.#tooLong(name, ids.length, '');
      return ids;
    });
    if (signal?.aborted) throw new AbortError('embedding was aborted');
    const callSite = new Error();
    // Texts are tokenized on worker threads while earlier calls run.
    const tokenized = Promise.all(inputs.map((x, i) => tokenArrays[i] ?? model.tokenizeToArrayAsync(x as string, { signal })));
    tokenized.catch(() => undefined);
    return this.#enqueue(signal, async (native) => {
      const ids = await tokenized;
      if (this.#life.disposed) throw new AbortError('embedding was aborted: the context was disposed');
      ids.forEach((t, i) => {
        if (t.length === 0) throw v.rangeError('text that tokenizes to at least one token', `inputs[${i}]`, inputs[i]);
        if (t.length > this.contextSize) throw this.#tooLong(`inputs[${i}]`, t.length, '');
      });
      const rows = this.pooling === 'none' ? ids.reduce((n, t) => n + t.length, 0) : ids.length;
      if (rows * this.dimension * 4 > MAX_EMBED_OUTPUT_BYTES) {
        throw new RangeError(
          `These ${ids.length} inputs would make ${rows} embeddings of ${this.dimension} floats, more than ${MAX_EMBED_OUTPUT_BYTES} bytes in one call: embed them in smaller groups`,
        );
      }
      if (signal?.aborted) throw new AbortError('embedding was aborted');
      this.model.checkFile();
      let raw: Float32Array[];
      try {
        raw = await native.embed(ids, this.normalize ? 2 : -1);
      } catch (error) {
        throw fromNative(error, callSite);
      }
      const embeddings = (this.pooling === 'none'
        ? raw.map((flat) => Array.from({ length: flat.length / this.dimension }, (_, r) => flat.subarray(r * this.dimension, (r + 1) * this.dimension)))
        : raw) as E[];
      const tokenCounts = ids.map((t) => t.length);
      return { embeddings, tokenCounts, promptTokens: tokenCounts.reduce((a, b) => a + b, 0) };
    });
  }

  #tooLong(name: string, tokens: number, least: string): RangeError {
    return Object.assign(
      new RangeError(`${name} has ${least}${tokens} tokens, more than contextSize (${this.contextSize}) allows; raise contextSize (and batchSize) or shorten it`),
      { code: 'ERR_OUT_OF_RANGE' },
    );
  }

  /** Queues `run` after every earlier call; `signal` removes it from the queue, or stops it while it runs. */
  #enqueue<T>(signal: AbortSignal | undefined, run: (native: NativeEmbeddingContext) => Promise<T>): Promise<T> {
    let state: 'queued' | 'running' | 'done' = 'queued';
    let runningOn: NativeEmbeddingContext | undefined;
    return new Promise<T>((resolve, reject) => {
      const onAbort = () => {
        if (state === 'queued') {
          state = 'done';
          reject(new AbortError('embedding was aborted'));
        } else if (state === 'running') {
          runningOn?.abort();
        }
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const start = async () => {
        if (state !== 'queued') return;
        state = 'running';
        try {
          runningOn = this.#life.alive();
          resolve(await run(runningOn));
        } catch (error) {
          reject(error);
        } finally {
          state = 'done';
          runningOn = undefined;
          signal?.removeEventListener('abort', onAbort);
        }
      };
      this.#tail = this.#tail.then(start);
    });
  }

  /** What llama.cpp allocated for this context and its model, per device (see {@link Context.memory}). */
  memory(): DeviceMemoryUse[] {
    try {
      return memoryUse(this.#life.alive().memory());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Runs `listener` once when the context is disposed. */
  onDispose(listener: () => void): void {
    this.#life.onDispose(listener);
  }

  /** Stops what is running (its promise rejects with {@link AbortError}), waits for it to end, and frees the context. Safe to call twice. */
  async dispose(): Promise<void> {
    await this.#life.dispose(async (native) => {
      native.dispose();
      await this.#tail;
    });
  }

  /** `await using embedder = await model.createEmbeddingContext()` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
