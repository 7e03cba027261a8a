import type { NativeGenerateResult } from './binding.js';
import {
  checkPromptLength, emptyResult, GENERATE_OPTIONS, Generation, prepareGeneration, toResult, type GenerateOptions,
  type GenerationResult,
} from './context.js';
import { AbortError, DisposedError, fromNative, InsufficientMemoryError } from './errors.js';
import { kvCacheBytes, memoryUse, type DeviceMemoryUse } from './context.js';
import { defaultThreads, type Model } from './model.js';
import { freemem } from 'node:os';
import * as v from './validate.js';

/** Options of {@link Model.createParallelContext}. */
export interface ParallelContextOptions {
  /** Sequences served at once ("slots", llama.cpp's `-np`). Default: 4. */
  parallel?: number;
  /**
   * Tokens of KV cache in all (llama.cpp `-c`). Each slot gets `contextSize / parallel` of them, as in
   * llama-server, unless `unifiedCache` is set. At least `parallel`. Default: `parallel` × the model's training
   * context, at most 4096 (with `unifiedCache`: one slot's worth, not multiplied).
   */
  contextSize?: number;
  /**
   * One KV buffer shared by all slots (llama.cpp `--kv-unified`): a slot may then use up to `contextSize`
   * tokens while the others leave room. Default: `false`.
   */
  unifiedCache?: boolean;
  /** Most tokens in one decode step, across slots (llama.cpp `-b`). Default: `min(2048, contextSize)`. */
  batchSize?: number;
  /** Physical batch size (llama.cpp `-ub`). Default: `min(512, batchSize)`. */
  ubatchSize?: number;
  /** CPU threads for generation. Default: the cores available to this process. */
  threads?: number;
  /** CPU threads for prompt processing. Default: `threads`. */
  batchThreads?: number;
  /** Flash attention: `'auto'`, `true` or `false`. Default: `'auto'`. */
  flashAttention?: boolean | 'auto';
}

/** @internal The keys of ParallelContextOptions (the server passes them through as they are). */
export const PARALLEL_CONTEXT_OPTIONS = ['parallel', 'contextSize', 'unifiedCache', 'batchSize', 'ubatchSize', 'threads', 'batchThreads', 'flashAttention'] as const;

/**
 * Options of {@link ParallelContext.generate}: those of Context.generate. `reuseCache` (default true) starts from
 * the slot's cached prefix; false evaluates the whole prompt, so that the same request gives bit-identical
 * logits whatever ran before it (a prefix evaluated in another batch shape can differ in the last bits).
 */
export type ParallelGenerateOptions = GenerateOptions;
const PARALLEL_GENERATE_OPTIONS = GENERATE_OPTIONS;

/** Counters of a ParallelContext since it was created. */
export interface ParallelStats {
  /** Slots serving a request now. */
  busySlots: number;
  /** Requests waiting for a free slot. */
  waiting: number;
  /** Requests submitted and not finished (busy + waiting + about to be reported). */
  outstanding: number;
  promptTokens: number;
  generatedTokens: number;
  /** Prompt tokens whose KV cache a slot already held. */
  reusedTokens: number;
  decodeCalls: number;
  completed: number;
  cancelled: number;
  failed: number;
}

/** A finished request's result, with where and how long it waited. */
export interface ParallelGenerationResult extends GenerationResult {
  /** The slot (sequence) that served it. */
  slot: number;
  /** Time spent waiting for a free slot. */
  queueMs: number;
}

interface NativeParallelResult extends NativeGenerateResult {
  queueMs: number;
  slot: number;
}

type NativeEvent = { id: number; text: string } | { id: number; result: NativeParallelResult } | { id: number; code: string; message: string };

interface NativeParallelContext {
  info(): {
    contextSize: number; slotContextSize: number; parallel: number; batchSize: number; ubatchSize: number; threads: number; batchThreads: number;
  };
  submit(id: number, prompt: Int32Array, params: object): void;
  cancel(id: number): void;
  stats(): ParallelStats;
  memory(): { device: string; model: number; context: number; compute: number }[];
  dispose(): Promise<void>;
  readonly disposed: boolean;
}

interface Pending {
  generation: Generation;
  promptTokens: number;
  resolve: (r: ParallelGenerationResult) => void;
  reject: (e: unknown) => void;
  callSite: Error;
}

/** @internal */
export async function createParallelContext(model: Model, options?: ParallelContextOptions): Promise<ParallelContext> {
  const o = v.options<ParallelContextOptions>('options', options, PARALLEL_CONTEXT_OPTIONS);
  const parallel = o.parallel === undefined ? 4 : v.integer('parallel', o.parallel, 1, 256);
  const unifiedCache = o.unifiedCache === undefined ? false : v.boolean('unifiedCache', o.unifiedCache);
  const perSlot = Math.min(model.info.trainContextSize || 4096, 4096);
  const contextSize =
    o.contextSize === undefined ? perSlot * (unifiedCache ? 1 : parallel) : v.integer('contextSize', o.contextSize, parallel, 1 << 24);
  const batchSize = o.batchSize === undefined ? Math.min(2048, contextSize) : v.integer('batchSize', o.batchSize, 1, 1 << 24);
  // llama.cpp would silently raise a smaller batch to one token per slot, and cut a larger one to the context.
  if (batchSize < parallel) throw v.rangeError(`integer at least parallel (${parallel})`, 'batchSize', batchSize);
  if (batchSize > contextSize) {
    throw v.rangeError(`positive integer no larger than contextSize (${contextSize})`, 'batchSize', batchSize);
  }
  const ubatchSize = o.ubatchSize === undefined ? Math.min(512, batchSize) : v.integer('ubatchSize', o.ubatchSize, 1, 1 << 24);
  if (ubatchSize > batchSize) throw v.rangeError(`positive integer no larger than batchSize (${batchSize})`, 'ubatchSize', ubatchSize);
  const threads = o.threads === undefined ? defaultThreads() : v.integer('threads', o.threads, 1, 512);
  const batchThreads = o.batchThreads === undefined ? threads : v.integer('batchThreads', o.batchThreads, 1, 512);
  const fa = o.flashAttention === undefined ? 'auto' : v.oneOf('flashAttention', o.flashAttention, ['auto', true, false] as const);
  if (!model.systemInfo.gpuOffload) {
    const kv = kvCacheBytes(model, contextSize);
    if (kv > freemem()) {
      throw new InsufficientMemoryError(
        `A context of ${contextSize} tokens needs ${(kv / 2 ** 30).toFixed(2)} GiB for its KV cache, but only ` +
          `${(freemem() / 2 ** 30).toFixed(2)} GiB of memory is available`,
      );
    }
  }
  const callSite = new Error();
  let context: ParallelContext | undefined;
  const onEvents = (events: NativeEvent[]) => context?.handle(events);
  try {
    const native = (await (model.native as unknown as {
      createParallelContext(params: object, onEvents: (events: NativeEvent[]) => void): Promise<NativeParallelContext>;
    }).createParallelContext(
      { parallel, contextSize, unifiedCache, batchSize, ubatchSize, threads, batchThreads, flashAttention: fa === 'auto' ? -1 : fa ? 1 : 0 },
      onEvents,
    ));
    context = new ParallelContext(model, native);
    return context;
  } catch (error) {
    throw fromNative(error, callSite);
  }
}

/**
 * Many generations at once on one model: N slots share one llama.cpp context, and a thread of its own decodes
 * one batch per step with the next token of every running generation and the prompts of new ones
 * (continuous batching, as llama-server). Requests beyond N wait for a free slot. A finished slot keeps its
 * KV cache, and a new request goes to the slot sharing the longest prefix with its prompt.
 */
export class ParallelContext {
  /** The model this context runs. */
  readonly model: Model;
  /** Tokens of KV cache in all. */
  readonly contextSize: number;
  /** Most tokens one request can hold (prompt and answer). */
  readonly slotContextSize: number;
  /** Slots: generations that run at once. */
  readonly parallel: number;
  /** Most tokens in one decode step, across slots. */
  readonly batchSize: number;
  /** Threads for generation. */
  readonly threads: number;

  #native: NativeParallelContext | undefined;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  readonly #disposeListeners = new Set<() => void>();

  /** @internal Use {@link Model.createParallelContext}. */
  constructor(model: Model, native: NativeParallelContext) {
    this.model = model;
    this.#native = native;
    const info = native.info();
    this.contextSize = info.contextSize;
    this.slotContextSize = info.slotContextSize;
    this.parallel = info.parallel;
    this.batchSize = info.batchSize;
    this.threads = info.threads;
  }

  /** Whether {@link ParallelContext.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#native === undefined;
  }

  #alive(): NativeParallelContext {
    if (!this.#native) throw new DisposedError('This parallel context has been disposed');
    return this.#native;
  }

  /** What llama.cpp allocated for this context and its model, per device (see {@link Context.memory}). */
  memory(): DeviceMemoryUse[] {
    try {
      return memoryUse(this.#alive().memory());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Counters for monitoring (a server's /metrics). */
  stats(): ParallelStats {
    return this.#alive().stats();
  }

  /**
   * Starts a generation; it runs alongside the others. Iterate the {@link Generation} for text, or await
   * its `result` (a {@link ParallelGenerationResult}).
   */
  generate(prompt: string | ArrayLike<number>, options?: ParallelGenerateOptions): Generation {
    this.#alive();
    const { prompt: prepared, params, o } = prepareGeneration(this.model, prompt, options, this.slotContextSize, PARALLEL_GENERATE_OPTIONS);
    const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
    const generation = new Generation(params.streamIntervalMs === 0);
    const callSite = new Error();
    const id = this.#nextId++;
    let promptTokens = typeof prepared === 'string' ? 0 : prepared.length;
    const aborted = () =>
      Object.assign(new AbortError('Generation was aborted'), {
        result: { ...emptyResult('abort', promptTokens), slot: -1, queueMs: 0 } satisfies ParallelGenerationResult,
      });
    if (signal?.aborted) {
      generation.attach(Promise.reject(aborted()), () => {});
      return generation;
    }
    let fail!: (error: unknown) => void;
    const result = new Promise<ParallelGenerationResult>((resolve, reject) => {
      fail = reject;
      this.#pending.set(id, { generation, promptTokens, resolve, reject, callSite });
    });
    // Until the request is submitted (a text prompt is tokenized on a worker thread first), stopping it only
    // takes it out of this object; after, the native loop drops it from its queue or stops its slot.
    let submitted = false;
    const dropped = (error: unknown) => {
      if (this.#pending.delete(id)) fail(error);
    };
    const submit = (ids: Int32Array) => {
      const entry = this.#pending.get(id);
      if (!entry) return; // stopped or disposed meanwhile
      promptTokens = entry.promptTokens = ids.length;
      this.model.checkFile();
      this.#alive().submit(id, ids, params);
      submitted = true;
    };
    const cancel = () => {
      if (submitted) this.#native?.cancel(id);
      else dropped(aborted());
    };
    if (typeof prepared === 'string') {
      this.model
        .tokenizeToArrayAsync(prepared, { addBos: o.addBos, parseSpecial: o.parseSpecial })
        .then((tokens) => submit(checkPromptLength(tokens, this.slotContextSize)))
        .catch((error: unknown) => dropped(fromNative(error, callSite)));
    } else {
      try {
        submit(prepared);
      } catch (error) {
        dropped(fromNative(error, callSite));
      }
    }
    signal?.addEventListener('abort', cancel, { once: true });
    const settled = result.finally(() => signal?.removeEventListener('abort', cancel));
    generation.attach(settled, cancel);
    return generation;
  }

  /** @internal Events from the native loop, in order: text first, then outcomes. */
  handle(events: NativeEvent[]): void {
    for (const event of events) {
      const pending = this.#pending.get(event.id);
      if (!pending) continue;
      if ('text' in event) {
        pending.generation.push(event.text);
      } else if ('result' in event) {
        this.#pending.delete(event.id);
        const raw = event.result;
        const out: ParallelGenerationResult = { ...toResult(raw, pending.promptTokens), slot: raw.slot, queueMs: raw.queueMs };
        if (raw.stopReason === 'abort') {
          pending.reject(Object.assign(new AbortError('Generation was aborted'), { result: out }));
        } else {
          pending.resolve(out);
        }
      } else {
        this.#pending.delete(event.id);
        pending.reject(fromNative(Object.assign(new Error(event.message), { code: event.code }), pending.callSite));
      }
    }
  }

  /** Runs `listener` once when the context is disposed. */
  onDispose(listener: () => void): void {
    this.#disposeListeners.add(listener);
  }

  /** Stops every running generation (they reject with DisposedError) and frees the context. Safe to call twice. */
  async dispose(): Promise<void> {
    const native = this.#native;
    if (!native) return;
    this.#native = undefined;
    await native.dispose();
    for (const [id, pending] of this.#pending) {
      this.#pending.delete(id);
      pending.reject(new DisposedError('The parallel context was disposed'));
    }
    for (const listener of this.#disposeListeners) listener();
    this.#disposeListeners.clear();
  }

  /** `await using` support: disposes the context. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
