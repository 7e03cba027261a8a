import type { NativeEvent, NativeParallelContext } from './binding.js';
import { checkContextOptions, type ParallelContextOptions } from './context-options.js';
import { DisposedError, fromNative } from './errors.js';
import {
  abortError, emptyResult, generationError, promptTokens, prepareGeneration, toResult, type Generation, type GenerateOptions, type GenerationResult,
} from './generation.js';
import { Lifecycle, nativeModel } from './lifecycle.js';
import { memoryUse, type DeviceMemoryUse } from './memory.js';
import type { Model } from './model.js';

/**
 * Options of {@link ParallelContext.generate}: those of Context.generate. `reuseCache` (default true) starts from
 * the slot's cached prefix; false evaluates the whole prompt, so that the same request gives bit-identical
 * logits whatever ran before it (a prefix evaluated in another batch shape can differ in the last bits).
 */
export type ParallelGenerateOptions = GenerateOptions;

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

interface Pending {
  generation: Generation;
  promptTokens: number;
  resolve: (r: ParallelGenerationResult) => void;
  reject: (e: unknown) => void;
  callSite: Error;
}

/** @internal */
export async function createParallelContext(model: Model, options?: ParallelContextOptions): Promise<ParallelContext> {
  const params = checkContextOptions(model, options, 'parallel');
  const callSite = new Error();
  let context: ParallelContext | undefined;
  const onEvents = (events: NativeEvent[]) => context?.handle(events);
  try {
    context = new ParallelContext(model, await nativeModel(model).createParallelContext(params, onEvents));
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

  readonly #life: Lifecycle<NativeParallelContext>;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();

  /** @internal Use {@link Model.createParallelContext}. */
  constructor(model: Model, native: NativeParallelContext) {
    this.model = model;
    this.#life = new Lifecycle(native, 'This parallel context has been disposed');
    const info = native.info();
    this.contextSize = info.contextSize;
    this.slotContextSize = info.slotContextSize;
    this.parallel = info.parallel;
    this.batchSize = info.batchSize;
    this.threads = info.threads!; // present until the context is disposed
  }

  /** Whether {@link ParallelContext.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#life.disposed;
  }

  /** What llama.cpp allocated for this context and its model, per device (see {@link Context.memory}). */
  memory(): DeviceMemoryUse[] {
    try {
      return memoryUse(this.#life.alive().memory());
    } catch (error) {
      throw fromNative(error);
    }
  }

  /** Counters for monitoring (a server's /metrics). */
  stats(): ParallelStats {
    return this.#life.alive().stats();
  }

  /**
   * Starts a generation; it runs alongside the others. Iterate the {@link Generation} for text, or await
   * its `result` (a {@link ParallelGenerationResult}).
   */
  generate(prompt: string | ArrayLike<number>, options?: ParallelGenerateOptions): Generation {
    this.#life.alive();
    const { prompt: prepared, params, o, signal, generation } = prepareGeneration(this.model, prompt, options, this.slotContextSize);
    const callSite = new Error();
    const id = this.#nextId++;
    let promptLength = typeof prepared === 'string' ? 0 : prepared.length;
    const aborted = () => abortError<ParallelGenerationResult>({ ...emptyResult('abort', promptLength), slot: -1, queueMs: 0 });
    if (signal?.aborted) {
      generation.attach(Promise.reject(aborted()), () => {});
      return generation;
    }
    let fail!: (error: unknown) => void;
    const result = new Promise<ParallelGenerationResult>((resolve, reject) => {
      fail = reject;
      this.#pending.set(id, { generation, promptTokens: promptLength, resolve, reject, callSite });
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
      promptLength = entry.promptTokens = ids.length;
      this.model.checkFile();
      this.#life.alive().submit(id, ids, params);
      submitted = true;
    };
    const cancel = () => {
      if (submitted && !this.#life.disposed) this.#life.alive().cancel(id);
      else dropped(aborted());
    };
    if (typeof prepared === 'string') {
      promptTokens(this.model, prepared, o, this.slotContextSize)
        .then(submit)
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
        pending.generation.push(event.text, event.logprobs);
      } else if ('code' in event) {
        this.#pending.delete(event.id);
        const extra = event.result ? { slot: event.result.slot, queueMs: event.result.queueMs } : undefined;
        pending.reject(generationError(Object.assign(new Error(event.message), { code: event.code, result: event.result }), pending.callSite, pending.promptTokens, extra));
      } else {
        this.#pending.delete(event.id);
        const raw = event.result;
        const out: ParallelGenerationResult = { ...toResult(raw, pending.promptTokens), slot: raw.slot, queueMs: raw.queueMs };
        if (raw.stopReason === 'abort') {
          pending.reject(abortError(out));
        } else {
          pending.resolve(out);
        }
      }
    }
  }

  /** Runs `listener` once when the context is disposed. */
  onDispose(listener: () => void): void {
    this.#life.onDispose(listener);
  }

  /** Stops every running generation (they reject with DisposedError) and frees the context. Safe to call twice. */
  async dispose(): Promise<void> {
    await this.#life.dispose(async (native) => {
      await native.dispose();
      for (const [id, pending] of this.#pending) {
        this.#pending.delete(id);
        pending.reject(new DisposedError('The parallel context was disposed'));
      }
    });
  }

  /** `await using` support: disposes the context. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
