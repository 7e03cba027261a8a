import type { NativeEvent, NativeParallelContext } from './binding.js';
import { checkContextOptions, type ParallelContextOptions } from './context-options.js';
import { DisposedError, fromNative } from './errors.js';
import {
  abortError, emptyResult, generationError, promptTokens, prepareGeneration, toResult, type Generation, type GenerateOptions, type GenerationResult,
  type PreparedGeneration,
} from './generation.js';
import { Lifecycle, nativeModel } from './lifecycle.js';
import { checkLoras, type LoraSetting } from './lora.js';
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
  /** Prompt tokens whose KV cache a slot already held or copied from another slot. */
  reusedTokens: number;
  /**
   * Of reusedTokens: those copied from another busy slot's cells (the other choices of
   * {@link ParallelContext.generateChoices}, requests sharing a long prefix such as a system prompt).
   */
  sharedTokens: number;
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
  #loras: readonly LoraSetting[] = [];
  #nextId = 1;
  #nextGroup = 1;
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
    const prepared = prepareGeneration(this.model, prompt, options, this.slotContextSize);
    const [start] = this.#start([prepared], 0);
    if (typeof prepared.prompt === 'string') {
      promptTokens(this.model, prepared.prompt, prepared.o, this.slotContextSize).then(start.submit, start.fail);
    } else {
      start.submit(prepared.prompt);
    }
    return prepared.generation;
  }

  /**
   * Several answers to one prompt (OpenAI's `n`), each with options of its own (a different seed, say), each in
   * a slot of its own: the prompt is tokenized and evaluated once, and the other choices copy its KV cache
   * (a seeded choice gives the same tokens as its own {@link ParallelContext.generate} call). A prompt given as
   * text is tokenized with the first choice's `addBos` and `parseSpecial`; the others must not differ.
   */
  generateChoices(prompt: string | ArrayLike<number>, choices: readonly ParallelGenerateOptions[]): Generation[] {
    this.#life.alive();
    if (!Array.isArray(choices) || choices.length === 0) {
      throw new TypeError('Expected choices to be a non-empty array of generate options');
    }
    const prepared = choices.map((c) => prepareGeneration(this.model, prompt, c, this.slotContextSize));
    for (const key of ['addBos', 'parseSpecial'] as const) {
      const i = prepared.findIndex((p) => p.o[key] !== prepared[0].o[key]);
      if (typeof prompt === 'string' && i > 0) {
        throw new TypeError(`choices[${i}].${key} differs from choices[0].${key}: the choices share one tokenization of the prompt`);
      }
    }
    const starts = this.#start(prepared, this.#nextGroup++);
    const text = prepared[0].prompt;
    if (typeof text === 'string') {
      promptTokens(this.model, text, prepared[0].o, this.slotContextSize).then(
        (ids) => {
          for (const s of starts) s.submit(ids);
        },
        (error: unknown) => {
          for (const s of starts) s.fail(error);
        },
      );
    } else {
      for (const s of starts) s.submit(text as Int32Array);
    }
    return prepared.map((p) => p.generation);
  }

  /**
   * Registers prepared generations and wires their stopping; each is submitted (`submit`) once its prompt is
   * tokens, or fails (`fail`) with why it could not be. `group` (not 0) lets the native loop evaluate a prompt
   * the group shares once.
   */
  #start(prepared: PreparedGeneration<ParallelGenerateOptions>[], group: number): { submit: (ids: Int32Array) => void; fail: (error: unknown) => void }[] {
    // Each request carries its adapters (its own `loras`, else the context's), checked now: a bad list throws here.
    const adapters = prepared.map(({ o }) => checkLoras(this.model, 'loras', o.loras ?? this.#loras));
    return prepared.map(({ prompt, params: base, signal, generation }, index) => {
      const params = { ...base, loras: adapters[index] };
      const callSite = new Error();
      const id = this.#nextId++;
      let promptLength = typeof prompt === 'string' ? 0 : prompt.length;
      const aborted = () => abortError<ParallelGenerationResult>({ ...emptyResult('abort', promptLength), slot: -1, queueMs: 0 });
      if (signal?.aborted) {
        generation.attach(Promise.reject(aborted()), () => {});
        return { submit: () => {}, fail: () => {} };
      }
      let reject!: (error: unknown) => void;
      const result = new Promise<ParallelGenerationResult>((resolve, rej) => {
        reject = rej;
        this.#pending.set(id, { generation, promptTokens: promptLength, resolve, reject: rej, callSite });
      });
      // Until the request is submitted (a text prompt is tokenized on a worker thread first), stopping it only
      // takes it out of this object; after, the native loop drops it from its queue or stops its slot.
      let submitted = false;
      const dropped = (error: unknown) => {
        if (this.#pending.delete(id)) reject(error);
      };
      const submit = (ids: Int32Array) => {
        const entry = this.#pending.get(id);
        if (!entry) return; // stopped or disposed meanwhile
        try {
          promptLength = entry.promptTokens = ids.length;
          this.model.checkFile();
          this.#life.alive().submit(id, ids, params, group);
          submitted = true;
        } catch (error) {
          dropped(fromNative(error, callSite));
        }
      };
      const cancel = () => {
        if (submitted && !this.#life.disposed) this.#life.alive().cancel(id);
        else dropped(aborted());
      };
      signal?.addEventListener('abort', cancel, { once: true });
      const settled = result.finally(() => signal?.removeEventListener('abort', cancel));
      generation.attach(settled, cancel);
      return { submit, fail: (error: unknown) => dropped(fromNative(error, callSite)) };
    });
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

  /** The LoRA adapters {@link ParallelContext.setLoras} gave requests without their own `loras`. */
  get loras(): LoraSetting[] {
    return this.#loras.map((l) => ({ ...l }));
  }

  /**
   * The LoRA adapters (of this model, {@link Model.loadLora}) of every request submitted from now on that does not
   * give its own `loras`; `[]`: the base model. Requests with different adapters run in separate batches of each
   * step, and a slot's cached prefix serves only requests with the same adapters and scales.
   */
  async setLoras(loras: readonly LoraSetting[]): Promise<void> {
    this.#life.alive();
    checkLoras(this.model, 'loras', loras);
    this.#loras = loras.map((l) => ({ adapter: l.adapter, scale: l.scale ?? 1 }));
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
