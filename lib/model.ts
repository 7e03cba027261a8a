import { resolve } from 'node:path';
import { binding, type ModelInfo, type NativeModel, type SystemInfo } from './binding.js';
import { checkModelChatTemplate } from './chat/detect.js';
import { createContext, type Context } from './context.js';
import { createEmbeddingContext, type EmbeddingContext, type EmbeddingContextOptions } from './embedding.js';
import type { ContextOptions, ParallelContextOptions } from './context-options.js';
import { AbortError, fromNative, GgufError, ModelLoadError } from './errors.js';
import { checkIdentity, closeIdentity, openIdentity, type FileIdentity } from './file-identity.js';
import { readGguf } from './gguf/reader.js';
import { validateForLlama } from './gguf/validate.js';
import { hasDevice, placeWeights, type GpuPlan } from './gpu.js';
import { placementCost, weightLayout } from './placement.js';
import { Lifecycle, registerModel } from './lifecycle.js';
import { checkLoadOptions, type LoadModelOptions } from './load-options.js';
import { loadLora, type LoraAdapter } from './lora.js';
import { createParallelContext, type ParallelContext } from './parallel.js';
import { prepareRpcServers, retainRpcServers } from './rpc.js';
import * as v from './validate.js';

/** The special tokens of a model's vocabulary (`null` where the vocabulary has none). */
export interface SpecialTokens {
  /** Beginning of sequence (`<s>`). */
  bos: number | null;
  /** End of sequence (`</s>`; for Huozi this is not the end of a turn, `<|endofutterance|>` is). */
  eos: number | null;
  /** End of turn, when the GGUF names one (`tokenizer.ggml.eot_token_id`). */
  eot: number | null;
  /** Newline. */
  nl: number | null;
  /** Whether tokenize() adds BOS by default, as the GGUF says. */
  addBos: boolean;
}

/** Options of {@link Model.tokenize}. */
export interface TokenizeOptions {
  /** Prepend BOS (when the vocabulary has one). Default: what the GGUF says (`tokenizer.ggml.add_bos_token`). */
  addBos?: boolean;
  /**
   * Turn the text of special tokens (`<|endofutterance|>`) into those tokens. Default: `false`, so that text
   * from users can never forge control tokens.
   */
  parseSpecial?: boolean;
}

/** Options of {@link Model.tokenizeAsync}. */
export interface TokenizeAsyncOptions extends TokenizeOptions {
  /**
   * Rejects the promise with an {@link AbortError} at once. (Tokenization itself is linear in the text's length
   * and cannot be interrupted: the worker thread finishes it and the result is dropped.)
   */
  signal?: AbortSignal;
}

/** Options of {@link Model.detokenize}. */
export interface DetokenizeOptions {
  /** Render special/control tokens as their text (`<|endofutterance|>`). Default: `false`. */
  special?: boolean;
}

/**
 * Loads a GGUF model. The file is read and checked in TypeScript first, so that a file llama.cpp would
 * `abort()` on is rejected with a {@link GgufError} (with the byte offset) instead.
 *
 * @throws `TypeError` / `RangeError` for bad arguments (before anything is read).
 * @throws {@link GgufError} when the file is malformed or would make llama.cpp abort.
 * @throws {@link ModelLoadError} when the file is missing or unreadable, llama.cpp refuses it, or an RPC server is unusable.
 * @throws {@link AbortError} when `signal` aborts.
 * @throws {@link ChatTemplateError} with `checkChatTemplate`, when the GGUF's chat template fails the probe.
 */
export async function loadModel(path: string, options?: LoadModelOptions): Promise<Model> {
  v.string('path', path, { allowEmpty: false });
  const { o, params, request, rpcServers, checkTemplate, onProgress, signal } = checkLoadOptions(options);
  if (signal?.aborted) throw new AbortError('model loading was aborted');

  const fullPath = resolve(path);
  const callSite = new Error();
  // Check the file in TypeScript first: what llama.cpp would abort() on becomes a GgufError here.
  let gguf: Awaited<ReturnType<typeof readGguf>>;
  try {
    gguf = await readGguf(fullPath);
    validateForLlama(gguf);
  } catch (error) {
    if (error instanceof GgufError || error instanceof ModelLoadError) throw error; // NotRegularFileError keeps its code
    throw new ModelLoadError(`Failed to load model from ${fullPath}: ${(error as Error).message}`, { cause: error });
  }
  if (signal?.aborted) throw new AbortError('model loading was aborted');
  if (rpcServers?.length) {
    params.rpcServers = await prepareRpcServers(rpcServers);
    if (signal?.aborted) throw new AbortError('model loading was aborted');
  }
  const layout = weightLayout(gguf);
  const offloads = hasDevice(rpcServers?.length ?? 0);
  const placed = await placeWeights(fullPath, layout, request, offloads);
  // Whether a GPU (or an RPC server) holds weights: the contexts' default threads leave it a core (system.ts).
  const offloaded = offloads && placementCost(layout, placed.gpuLayers, placed.overrides).deviceBytes > 0;
  const gpuPlan = placed.plan;
  params.gpuLayers = placed.gpuLayers;
  if (placed.overrides.length > 0) params.overrides = placed.overrides;
  if (placed.tensorSplit) params.tensorSplit = placed.tensorSplit;
  // A plan of 'auto' that keeps weights in host memory next to a GPU reads them without mmap unless told to map:
  // llama.cpp then puts them in the GPU's pinned host buffers, and a prompt's batches stream them to the GPU
  // far faster (q2_k at an 8.9 GiB budget on an H200: pp512 3.4x, tg the same or better; docs/gpu.md).
  if (gpuPlan?.chosenBy === 'fit' && gpuPlan.cost.hostBytes > 0 && gpuPlan.cost.deviceBytes > 0 && o.useMmap === undefined) {
    params.useMmap = false;
  }
  let last = -1;
  let done = false;
  let callbackError: unknown;
  let handle: ReturnType<ReturnType<typeof binding>['loadModel']> | undefined;
  const report = (p: number) => {
    // Progress may arrive after the promise settles (it comes through another queue); keep it monotonic
    // and leave 1 to the end. A throwing callback must not become an uncaught exception: it stops the load.
    if (!onProgress || done || p >= 1 || p <= last || callbackError !== undefined) return;
    last = p;
    try {
      onProgress(p);
    } catch (error) {
      callbackError = error;
      handle?.cancel();
    }
  };
  // The file llama.cpp maps, held open to notice later changes to it (see Model.checkFile): with useMmap false
  // the weights are read into memory and later changes do not matter. A vocabOnly model never evaluates.
  let watch = params.useMmap !== false && o.vocabOnly !== true ? openIdentity(fullPath) : undefined;
  handle = binding().loadModel(fullPath, params, onProgress ? report : undefined);
  const onAbort = () => handle.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const native = await handle.promise;
    done = true;
    if (callbackError !== undefined) {
      await native.dispose();
      throw callbackError;
    }
    const model = new Model(native, fullPath, gpuPlan, watch, offloaded);
    watch = undefined;
    if (params.rpcServers) model.onDispose(retainRpcServers(params.rpcServers));
    if (checkTemplate) {
      try {
        await checkModelChatTemplate(model);
      } catch (error) {
        await model.dispose();
        throw error;
      }
    }
    try {
      onProgress?.(1);
    } catch (error) {
      await model.dispose();
      callbackError = error;
      throw error;
    }
    return model;
  } catch (error) {
    done = true;
    if (callbackError !== undefined) throw callbackError;
    const typed = fromNative(error, callSite);
    if (typed instanceof ModelLoadError) {
      typed.message = typed.message.replace(/^failed to load model from /, `Failed to load model from `);
    }
    throw typed;
  } finally {
    signal?.removeEventListener('abort', onAbort);
    if (watch) closeIdentity(watch);
  }
}

// Closes the descriptor of a model that is collected without dispose().
const identityCloser = new FinalizationRegistry<FileIdentity>(closeIdentity);

/** A loaded GGUF model. Create with {@link loadModel}; free with {@link Model.dispose}. */
export class Model {
  /** Absolute path of the GGUF file. */
  readonly path: string;
  /** Shape and facts llama.cpp reports about the model. */
  readonly info: Readonly<ModelInfo>;
  /** Every GGUF metadata key, with llama.cpp's string rendering of its value. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The vocabulary's special tokens. */
  readonly tokens: Readonly<SpecialTokens>;
  /** Number of tokens in the vocabulary. */
  readonly vocabularySize: number;

  readonly #life: Lifecycle<NativeModel>;
  #systemInfo: SystemInfo | undefined;
  #special: Map<string, number> | undefined;
  #specialText: Map<number, string> | undefined;
  readonly #tokenizing = new Set<Promise<unknown>>();
  #identity: FileIdentity | undefined;
  #limits: { type: string; maxTokenBytes: number } | undefined;

  /** With gpuLayers 'auto': what llama.cpp's fit chose. */
  readonly gpuPlan: Readonly<GpuPlan> | undefined;
  /** @internal Whether a GPU or an RPC server holds some of the weights (the contexts' default threads). */
  readonly offloaded: boolean;

  /** @internal Use {@link loadModel}. */
  constructor(native: NativeModel, path: string, gpuPlan?: GpuPlan, identity?: FileIdentity, offloaded = false) {
    // A parent: its contexts are disposed before its weights are freed.
    this.#life = new Lifecycle(native, 'This model has been disposed', { parent: true });
    registerModel(this, this.#life);
    this.#identity = identity;
    if (identity) identityCloser.register(this, identity, this);
    this.path = path;
    this.gpuPlan = gpuPlan;
    this.offloaded = offloaded;
    const { metadata, tokens, ...info } = native.info();
    this.info = Object.freeze(info);
    this.metadata = Object.freeze(metadata);
    this.tokens = Object.freeze({ bos: tokens.bos, eos: tokens.eos, eot: tokens.eot, nl: tokens.nl, addBos: tokens.addBos });
    this.vocabularySize = info.vocabularySize;
  }

  /** @internal What the loaded addon supports (cached). */
  get systemInfo(): SystemInfo {
    return (this.#systemInfo ??= binding().systemInfo());
  }

  /** Whether {@link Model.dispose} has run. */
  get disposed(): boolean {
    return this.#life.disposed;
  }

  /** Text to token ids. Throws {@link DisposedError} after dispose(). */
  tokenize(text: string, options?: TokenizeOptions): number[] {
    return Array.from(this.tokenizeToArray(text, options));
  }

  /** @internal Like tokenize(), without the copy into a JS array. */
  tokenizeToArray(text: string, options?: TokenizeOptions): Int32Array {
    v.string('text', text);
    const o = v.options<TokenizeOptions>('options', options, ['addBos', 'parseSpecial']);
    const addBos = o.addBos === undefined ? this.tokens.addBos : v.boolean('addBos', o.addBos);
    const parseSpecial = o.parseSpecial === undefined ? false : v.boolean('parseSpecial', o.parseSpecial);
    return this.#life.alive().tokenize(text, addBos, parseSpecial);
  }

  /**
   * Text to token ids, on a worker thread: the event loop stays free however long the text is (tokenization is
   * linear in its length; a 1.6 MB text of emoji takes well under a second). Throws {@link DisposedError} after
   * dispose(); `signal` rejects the promise with an {@link AbortError}.
   */
  async tokenizeAsync(text: string, options?: TokenizeAsyncOptions): Promise<number[]> {
    return Array.from(await this.tokenizeToArrayAsync(text, options));
  }

  /** @internal Like tokenizeAsync(), without the copy into a JS array. */
  tokenizeToArrayAsync(text: string, options?: TokenizeAsyncOptions): Promise<Int32Array> {
    v.string('text', text);
    const o = v.options<TokenizeAsyncOptions>('options', options, ['addBos', 'parseSpecial', 'signal']);
    const addBos = o.addBos === undefined ? this.tokens.addBos : v.boolean('addBos', o.addBos);
    const parseSpecial = o.parseSpecial === undefined ? false : v.boolean('parseSpecial', o.parseSpecial);
    const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
    if (signal?.aborted) return Promise.reject(new AbortError('tokenization was aborted'));
    const callSite = new Error();
    const work = this.#life.alive().tokenizeAsync(text, addBos, parseSpecial);
    const tracked = work.catch(() => undefined).finally(() => this.#tokenizing.delete(tracked));
    this.#tokenizing.add(tracked);
    const result = work.catch((error: unknown) => {
      throw fromNative(error, callSite);
    });
    if (!signal) return result;
    return new Promise<Int32Array>((resolve, reject) => {
      const onAbort = () => reject(new AbortError('tokenization was aborted'));
      signal.addEventListener('abort', onAbort, { once: true });
      result.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /**
   * @internal The fewest tokens `text` can tokenize into, from its length in bytes and the vocabulary's longest
   * token (SPM and BPE tokenizers never shrink the text); 0 when the vocabulary gives no such bound. Cheap:
   * lets a prompt that cannot fit be refused before it is tokenized.
   */
  minTokens(text: string): number {
    this.#limits ??= this.#life.alive().tokenizerLimits();
    const { type, maxTokenBytes } = this.#limits;
    if ((type !== 'spm' && type !== 'bpe') || maxTokenBytes <= 0) return 0;
    return Math.ceil(Buffer.byteLength(text, 'utf8') / maxTokenBytes);
  }

  /**
   * @internal Throws a {@link ModelLoadError} when the memory-mapped model file changed on disk since it was
   * loaded (truncated, or written over in place): evaluating would read pages that are gone (SIGBUS, the process
   * dies) or weights that are not the model's. One fstat; called before every evaluation.
   */
  checkFile(): void {
    if (this.#identity) checkIdentity(this.#identity, this.path);
  }

  /** Token ids to text. */
  detokenize(tokens: ArrayLike<number>, options?: DetokenizeOptions): string {
    const ids = v.tokens('tokens', tokens, this.vocabularySize);
    const o = v.options<DetokenizeOptions>('options', options, ['special']);
    const special = o.special === undefined ? false : v.boolean('special', o.special);
    return this.#life.alive().detokenize(ids, false, special);
  }

  /** The vocabulary's control and user-defined tokens by their text (`<|endofutterance|>` → 2049). */
  get specialTokens(): ReadonlyMap<string, number> {
    if (!this.#special) {
      const { ids, texts } = this.#life.alive().specialTokens();
      this.#special = new Map(texts.map((t, i) => [t, ids[i]]));
      this.#specialText = new Map(texts.map((t, i) => [ids[i], t]));
    }
    return this.#special;
  }

  /** The text of a special token, or undefined for an ordinary one. */
  specialTokenText(token: number): string | undefined {
    void this.specialTokens;
    return this.#specialText!.get(token);
  }

  /** Whether the token ends generation by llama.cpp's rules (eos, eot and the like). */
  isEndOfGeneration(token: number): boolean {
    v.integer('token', token, 0, this.vocabularySize - 1);
    return this.#life.alive().isEog(token);
  }

  /** Creates an inference context (KV cache and compute buffers) on this model. */
  async createContext(options?: ContextOptions): Promise<Context> {
    const context = await createContext(this, options);
    this.#life.adopt(context);
    return context;
  }

  /**
   * Creates a context that serves several generations at once (continuous batching over `parallel` slots),
   * for servers and batch jobs. See {@link ParallelContext}.
   */
  async createParallelContext(options?: ParallelContextOptions): Promise<ParallelContext> {
    const context = await createParallelContext(this, options);
    this.#life.adopt(context);
    return context;
  }

  /**
   * Loads a LoRA adapter (a GGUF adapter, as `huozi-gguf convert-lora` or llama.cpp's convert_lora_to_gguf.py
   * writes it) for this model. The file is checked against the model first: an adapter for another model, a
   * tensor the model lacks, a shape, rank or type llama.cpp cannot apply, a truncated file throw a
   * {@link LoraError} naming the tensor or key. Apply it with `context.setLoras([{ adapter, scale }])` or a
   * generation's `loras`. Disposing the model disposes its adapters.
   */
  async loadLora(path: string): Promise<LoraAdapter> {
    const adapter = await loadLora(this, this.#life.alive(), this.path, path);
    if (this.#life.disposed) {
      await adapter.dispose();
      this.#life.alive();
    }
    this.#life.adopt(adapter);
    return adapter;
  }

  /**
   * Creates an embedding context (see {@link EmbeddingContext}): pooled vectors, or one per token with
   * `pooling: 'none'`. Default pooling: the GGUF's `<arch>.pooling_type` (mean, cls or last), else mean.
   */
  createEmbeddingContext(options: EmbeddingContextOptions & { pooling: 'none' }): Promise<EmbeddingContext<Float32Array[]>>;
  createEmbeddingContext(options?: EmbeddingContextOptions & { pooling?: 'mean' | 'cls' | 'last' | 'model' }): Promise<EmbeddingContext<Float32Array>>;
  createEmbeddingContext(options?: EmbeddingContextOptions): Promise<EmbeddingContext>;
  async createEmbeddingContext(options?: EmbeddingContextOptions): Promise<EmbeddingContext> {
    const context = await createEmbeddingContext(this, options);
    this.#life.adopt(context);
    return context;
  }

  /** Runs `listener` once when the model is disposed. */
  onDispose(listener: () => void): void {
    this.#life.onDispose(listener);
  }

  /** Disposes the model's contexts (stopping what they run), then frees the weights. Safe to call twice. */
  async dispose(): Promise<void> {
    await this.#life.dispose(
      (native) => {
        const freed = native.dispose();
        if (this.#identity) {
          identityCloser.unregister(this);
          closeIdentity(this.#identity);
          this.#identity = undefined;
        }
        // dispose() resolves once the weights are freed: RAM and VRAM are back before the next model loads.
        return freed;
      },
      // Tokenizations on worker threads hold the model; they are short (linear in their text).
      async () => {
        while (this.#tokenizing.size > 0) await Promise.all([...this.#tokenizing]);
      },
    );
  }

  /** `await using model = await loadModel(...)` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
