import type { NativeContext, NativeGenerateResult } from './binding.js';
import { checkContextOptions, type ContextOptions } from './context-options.js';
import { AbortError, fromNative } from './errors.js';
import {
  abortError, emptyResult, generationError, prepareGeneration, promptTokens, toResult, type Generation, type GenerateOptions,
} from './generation.js';
import { Lifecycle, nativeModel } from './lifecycle.js';
import { checkLoras, loraFingerprint, type CheckedLora, type LoraSetting } from './lora.js';
import { memoryUse, type DeviceMemoryUse } from './memory.js';
import type { Model } from './model.js';
import * as v from './validate.js';

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

/** @internal */
export async function createContext(model: Model, options?: ContextOptions): Promise<Context> {
  const params = checkContextOptions(model, options, 'single');
  const callSite = new Error();
  try {
    return new Context(model, await nativeModel(model).createContext(params));
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

  readonly #life: Lifecycle<NativeContext>;
  #tail: Promise<unknown> = Promise.resolve();
  /** The adapters setLoras() gave (applied unless a generation asks for others). */
  #loras: readonly LoraSetting[] = [];
  /** Whether the native context applies other adapters than #loras (a generation's own `loras`). */
  #lorasOverridden = false;
  /** What the native context applies now (its cache was computed with these). */
  #applied: readonly CheckedLora[] = [];

  /** @internal Use {@link Model.createContext}. */
  constructor(model: Model, native: NativeContext) {
    this.model = model;
    this.#life = new Lifecycle(native, 'This context has been disposed');
    const info = native.info();
    this.contextSize = info.contextSize;
    this.batchSize = info.batchSize;
    this.ubatchSize = info.ubatchSize;
    this.threads = info.threads;
    this.batchThreads = info.batchThreads;
  }

  /** Whether {@link Context.dispose} has run (or its model was disposed). */
  get disposed(): boolean {
    return this.#life.disposed;
  }

  /**
   * The tokens whose keys and values the context holds, in order. Throws a BusyError while an operation
   * runs (the list is changing); read it between operations.
   */
  get tokens(): number[] {
    try {
      return Array.from(this.#life.alive().tokens());
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
          const native = this.#life.alive();
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
    this.#life.alive();
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
          this.#applyLoras(native, undefined);
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
    this.#life.alive();
    const { prompt: prepared, params, o, signal, generation } = prepareGeneration(this.model, prompt, options, this.contextSize);
    const loras = o.loras === undefined ? undefined : checkLoras(this.model, 'loras', o.loras);
    const callSite = new Error();
    // stop() (or breaking out of the iteration) ends this generation only: queued, it leaves the queue at once;
    // running, it stops at the next token. It never touches another operation of the context.
    const stopper = new AbortController();
    let promptLength = typeof prepared === 'string' ? 0 : prepared.length;
    const aborted = () => abortError(emptyResult('abort', promptLength));
    // A text prompt is tokenized on a worker thread, while earlier operations run.
    const tokens = typeof prepared === 'string' ? promptTokens(this.model, prepared, o, this.contextSize) : undefined;
    tokens?.catch(() => undefined);
    const result = this.#enqueue(
      [signal, stopper.signal],
      async (native) => {
        const ids = tokens ? await tokens : (prepared as Int32Array);
        promptLength = ids.length;
        if (stopper.signal.aborted || signal?.aborted) throw aborted();
        this.model.checkFile();
        let raw: NativeGenerateResult;
        try {
          this.#applyLoras(native, loras);
          raw = await native.generate(ids, params, (text, logprobs) => generation.push(text, logprobs));
        } catch (error) {
          throw generationError(error, callSite, ids.length);
        }
        const out = toResult(raw, ids.length);
        if (raw.stopReason === 'abort') {
          throw abortError(out);
        }
        return out;
      },
      { queuedAbort: aborted },
    );
    generation.attach(result, () => stopper.abort());
    return generation;
  }

  /** The LoRA adapters {@link Context.setLoras} applies to every evaluation (empty: the base model). */
  get loras(): LoraSetting[] {
    return this.#loras.map((l) => ({ ...l }));
  }

  /**
   * Applies LoRA adapters (of this model, {@link Model.loadLora}) to every later evaluation and generation that
   * does not ask for its own (`generate(..., { loras })`); `[]` returns to the base model. Runs after earlier
   * operations. A change of adapters empties the cache: its keys and values were computed with the others.
   */
  async setLoras(loras: readonly LoraSetting[]): Promise<void> {
    this.#life.alive();
    checkLoras(this.model, 'loras', loras);
    const list = loras.map((l) => ({ adapter: l.adapter, scale: l.scale ?? 1 }));
    const callSite = new Error();
    await this.#enqueue([], async (native) => {
      try {
        const checked = checkLoras(this.model, 'loras', list);
        native.setLoras(checked);
        this.#applied = checked;
      } catch (error) {
        throw fromNative(error, callSite);
      }
      this.#loras = list;
      this.#lorasOverridden = false;
    });
  }

  /** Before an evaluation: a generation's own adapters, or the context's after a generation that had its own. */
  #applyLoras(native: NativeContext, loras: CheckedLora[] | undefined): void {
    if (loras !== undefined) {
      native.setLoras(loras);
      this.#applied = loras;
      this.#lorasOverridden = true;
    } else if (this.#lorasOverridden) {
      const checked = checkLoras(this.model, 'loras', this.#loras);
      native.setLoras(checked);
      this.#applied = checked;
      this.#lorasOverridden = false;
    }
  }

  /** @internal The adapters the cached keys and values were computed with (session files record them). */
  get lorasFingerprint(): { sha256: string; scale: number }[] {
    return loraFingerprint(this.#applied);
  }

  /** Forgets the cached tokens from `position` on (0 empties the context). */
  async eraseFrom(position: number): Promise<void> {
    v.integer('position', position, 0);
    await this.#enqueue([], async (native) => native.eraseFrom(position));
  }

  /** @internal The KV cache of the sequence and its tokens (for ChatSession.save). */
  saveState(): Promise<{ data: Buffer; tokens: number[] }> {
    this.#life.alive();
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
    this.#life.alive();
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
      return this.#life.alive().imatrix();
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
      return memoryUse(this.#life.alive().memory());
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
    this.#life.onDispose(listener);
  }

  /** Stops what is running, waits for it to end, and frees the context. Safe to call twice. */
  async dispose(): Promise<void> {
    await this.#life.dispose(async (native) => {
      // Native dispose aborts a running operation and frees the context as soon as it ends.
      native.dispose();
      await this.#tail;
    });
  }

  /** `await using context = await model.createContext()` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
