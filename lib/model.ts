import { closeSync, fstatSync, openSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { resolve } from 'node:path';
import { binding, type NativeModel, type NativeModelInfo, type NativeSystemInfo } from './binding.js';
import { Context, createContext, type ContextOptions } from './context.js';
import { AbortError, DisposedError, fromNative, GgufError, ModelLoadError } from './errors.js';
import { readGguf } from './gguf/reader.js';
import { validateForLlama } from './gguf/validate.js';
import { fitToMemory } from './gpu.js';
import { createParallelContext, type ParallelContext, type ParallelContextOptions } from './parallel.js';
import { prepareRpcServers, retainRpcServers, validateRpcServers } from './rpc.js';
import * as v from './validate.js';
import { checkModelChatTemplate } from './chat/detect.js';

/** Options of {@link loadModel}. Unknown keys throw a `TypeError` naming the closest known one. */
export interface LoadModelOptions {
  /**
   * Layers to offload to the GPU (llama.cpp `-ngl`): a number, `'max'` for all of them, or `'auto'`: the
   * most layers (and, for MoE models, which expert tensors stay on the CPU, like llama.cpp's `--n-cpu-moe`)
   * that fit the free GPU memory with a context of `fit.contextSize` and a safety margin, measured by
   * llama.cpp's own fit (no out-of-memory abort); the choice is in `model.gpuPlan`. Ignored by the CPU
   * build, except with `rpcServers`: then it counts the layers on the RPC servers ('auto' is not supported
   * with them). Default: `'max'`.
   */
  gpuLayers?: number | 'max' | 'auto';
  /** For gpuLayers 'auto': the context to leave room for (default 4096) and the margin per GPU (default 1024 MiB). */
  fit?: {
    /** Tokens of context to leave room for. Default: 4096. */
    contextSize?: number;
    /** Free memory to leave on each GPU, in MiB. Default: 1024. */
    marginMiB?: number;
  };
  /** The GPU for the whole model with splitMode 'none' (llama.cpp `-mg`). Default: 0. */
  mainGpu?: number;
  /** How to use several GPUs (llama.cpp `-sm`): 'none', 'layer' (default) or 'row'. */
  splitMode?: 'none' | 'layer' | 'row';
  /** Share of the model per GPU (llama.cpp `-ts`), e.g. [3, 1]. Default: by free memory. */
  tensorSplit?: number[];
  /**
   * Memory-map the file instead of reading it (llama.cpp `--mmap`). Default: llama.cpp's own choice (map it,
   * unless a device in use cannot work from mapped memory), as llama-cli and llama-bench do.
   */
  useMmap?: boolean;
  /** Lock the weights in RAM so the OS cannot swap them out (llama.cpp `--mlock`). Default: `false`. */
  useMlock?: boolean;
  /** Load only the vocabulary: enough to tokenize, nothing to generate with. Default: `false`. */
  vocabOnly?: boolean;
  /** Check tensor data for NaN/inf while loading (llama.cpp `--check-tensors`). Default: `false`. */
  checkTensors?: boolean;
  /**
   * llama.cpp RPC servers (`huozi-gguf rpc-server`, llama.cpp's ggml-rpc-server) whose devices take layers,
   * as `"host:port"` (llama.cpp `--rpc`), e.g. `['192.168.1.10:50052']`. Layers are spread over the servers'
   * devices (first, in this order) and the local GPUs by free memory, or by `tensorSplit`; what gpuLayers
   * leaves stays on the local CPU. Each server is checked with the protocol's handshake first (a
   * {@link ModelLoadError} naming it when it is unreachable, busy or incompatible). A server that dies while
   * the model is in use aborts this process: llama.cpp's RPC client cannot recover (docs/gpu.md). The
   * protocol is unauthenticated and unencrypted: use trusted networks only. Default: none.
   */
  rpcServers?: string[];
  /**
   * Check the GGUF's own `tokenizer.chat_template` (when it has one) by rendering a probe conversation under the
   * template limits, as {@link checkChatTemplate} does; a template that fails rejects the load with a
   * {@link ChatTemplateError}. Default: `false`: a model whose template is broken still loads (for completion,
   * perplexity, or a chat with a template of your own), and the error comes when a chat renders it.
   */
  checkChatTemplate?: boolean;
  /** Called with the load progress, from 0 to 1; 1 is reported exactly once, when the model is ready. */
  onProgress?: (progress: number) => void;
  /** Stops loading; the promise then rejects with an {@link AbortError}. */
  signal?: AbortSignal;
}

const LOAD_OPTIONS = [
  'gpuLayers', 'fit', 'mainGpu', 'splitMode', 'tensorSplit', 'useMmap', 'useMlock', 'vocabOnly', 'checkTensors', 'rpcServers',
  'onProgress', 'signal', 'checkChatTemplate',
] as const;

/** How the model was placed on the devices when loaded with gpuLayers 'auto'. */
export interface GpuPlan {
  /** Layers placed on the GPU(s) (-1: all of them). */
  gpuLayers: number;
  /** Tensors kept on another device than their layer's (MoE experts on the CPU). */
  overrides: { pattern: string; buffer: string }[];
  /** The context size the plan leaves room for (`fit.contextSize`). */
  contextSize: number;
  /** `fits`, `doesNotFit` (even the smallest choice exceeds free memory) or `error`. */
  status: 'fits' | 'doesNotFit' | 'error';
}

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
  const o = v.options<LoadModelOptions>('options', options, LOAD_OPTIONS);
  const params: Record<string, unknown> = {};
  if (o.gpuLayers !== undefined && o.gpuLayers !== 'auto') {
    params.gpuLayers = o.gpuLayers === 'max' ? -1 : v.integer('gpuLayers', o.gpuLayers, 0, 100_000);
  }
  if (o.mainGpu !== undefined) params.mainGpu = v.integer('mainGpu', o.mainGpu, 0, 127);
  if (o.splitMode !== undefined) params.splitMode = { none: 0, layer: 1, row: 2 }[v.oneOf('splitMode', o.splitMode, ['none', 'layer', 'row'] as const)];
  if (o.tensorSplit !== undefined) {
    if (!Array.isArray(o.tensorSplit)) throw v.typeError('array of numbers', 'tensorSplit', o.tensorSplit);
    params.tensorSplit = o.tensorSplit.map((x, i) => v.number(`tensorSplit[${i}]`, x, 0));
  }
  const fitOptions = v.options<{ contextSize: number; marginMiB: number }>('fit', o.fit, ['contextSize', 'marginMiB']);
  const fitContext = fitOptions.contextSize === undefined ? 4096 : v.integer('fit.contextSize', fitOptions.contextSize, 1, 1 << 24);
  const fitMargin = fitOptions.marginMiB === undefined ? 1024 : v.number('fit.marginMiB', fitOptions.marginMiB, 0);
  if (o.useMmap !== undefined) params.useMmap = v.boolean('useMmap', o.useMmap);
  if (o.useMlock !== undefined) params.useMlock = v.boolean('useMlock', o.useMlock);
  if (o.vocabOnly !== undefined) params.vocabOnly = v.boolean('vocabOnly', o.vocabOnly);
  if (o.checkTensors !== undefined) params.checkTensors = v.boolean('checkTensors', o.checkTensors);
  const rpcServers = o.rpcServers === undefined ? undefined : validateRpcServers(o.rpcServers);
  if (rpcServers?.length && o.gpuLayers === 'auto') {
    // fitToMemory measures local devices only.
    throw v.rangeError('a number or "max" with rpcServers', 'gpuLayers', o.gpuLayers);
  }
  const checkTemplate = o.checkChatTemplate === undefined ? false : v.boolean('checkChatTemplate', o.checkChatTemplate);
  const onProgress = o.onProgress === undefined ? undefined : v.func<(p: number) => void>('onProgress', o.onProgress);
  const signal = o.signal === undefined ? undefined : v.signal('signal', o.signal);
  if (signal?.aborted) throw new AbortError('model loading was aborted');

  const fullPath = resolve(path);
  const callSite = new Error();
  // Check the file in TypeScript first: what llama.cpp would abort() on becomes a GgufError here.
  try {
    validateForLlama(await readGguf(fullPath));
  } catch (error) {
    if (error instanceof GgufError || error instanceof ModelLoadError) throw error; // NotRegularFileError keeps its code
    throw new ModelLoadError(`Failed to load model from ${fullPath}: ${(error as Error).message}`, { cause: error });
  }
  if (signal?.aborted) throw new AbortError('model loading was aborted');
  if (rpcServers?.length) {
    params.rpcServers = await prepareRpcServers(rpcServers);
    if (signal?.aborted) throw new AbortError('model loading was aborted');
  }
  let gpuPlan: GpuPlan | undefined;
  if (o.gpuLayers === 'auto') {
    const fitted = await fitToMemory(fullPath, { contextSize: fitContext, marginBytes: Math.round(fitMargin * 2 ** 20) });
    gpuPlan = { gpuLayers: fitted.gpuLayers, overrides: fitted.overrides, contextSize: fitted.contextSize, status: fitted.status };
    params.gpuLayers = fitted.gpuLayers;
    if (fitted.overrides.length) params.overrides = fitted.overrides;
    if (fitted.tensorSplit.some((x) => x > 0)) params.tensorSplit = fitted.tensorSplit;
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
  let watch = o.useMmap !== false && o.vocabOnly !== true ? openIdentity(fullPath) : undefined;
  handle = binding().loadModel(fullPath, params, onProgress ? report : undefined);
  const onAbort = () => handle.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const native = await handle.promise;
    done = true;
    if (callbackError !== undefined) {
      native.dispose();
      throw callbackError;
    }
    const model = new Model(native, fullPath, gpuPlan, watch);
    watch = undefined;
    if (params.rpcServers) model.onDispose(retainRpcServers(params.rpcServers as string[]));
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

/** The identity of an open model file: what changes when the file is truncated or written over in place. */
interface FileIdentity {
  fd: number;
  size: bigint;
  mtimeNs: bigint;
}

function openIdentity(path: string): FileIdentity | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(path, 'r');
    const st = fstatSync(fd, { bigint: true });
    return { fd, size: st.size, mtimeNs: st.mtimeNs };
  } catch {
    // Unreadable or gone: llama.cpp's load reports it.
    if (fd !== undefined) closeSync(fd);
    return undefined;
  }
}

function closeIdentity(id: FileIdentity): void {
  try {
    closeSync(id.fd);
  } catch {
    // already closed
  }
}

// Closes the descriptor of a model that is collected without dispose().
const identityCloser = new FinalizationRegistry<FileIdentity>(closeIdentity);

/** A loaded GGUF model. Create with {@link loadModel}; free with {@link Model.dispose}. */
export class Model {
  /** Absolute path of the GGUF file. */
  readonly path: string;
  /** Shape and facts llama.cpp reports about the model. */
  readonly info: Readonly<Omit<NativeModelInfo, 'metadata' | 'tokens'>>;
  /** Every GGUF metadata key, with llama.cpp's string rendering of its value. */
  readonly metadata: Readonly<Record<string, string>>;
  /** The vocabulary's special tokens. */
  readonly tokens: Readonly<SpecialTokens>;
  /** Number of tokens in the vocabulary. */
  readonly vocabularySize: number;

  #native: NativeModel | undefined;
  #systemInfo: NativeSystemInfo | undefined;
  #special: Map<string, number> | undefined;
  #specialText: Map<number, string> | undefined;
  readonly #contexts = new Set<{ dispose(): Promise<void> }>();
  readonly #disposeListeners = new Set<() => void>();
  readonly #tokenizing = new Set<Promise<unknown>>();
  #identity: FileIdentity | undefined;
  #limits: { type: string; maxTokenBytes: number } | undefined;

  /** With gpuLayers 'auto': what llama.cpp's fit chose. */
  readonly gpuPlan: Readonly<GpuPlan> | undefined;

  /** @internal Use {@link loadModel}. */
  constructor(native: NativeModel, path: string, gpuPlan?: GpuPlan, identity?: FileIdentity) {
    this.#native = native;
    this.#identity = identity;
    if (identity) identityCloser.register(this, identity, this);
    this.path = path;
    this.gpuPlan = gpuPlan;
    const { metadata, tokens, ...info } = native.info();
    this.info = Object.freeze(info);
    this.metadata = Object.freeze(metadata);
    this.tokens = Object.freeze({ bos: tokens.bos, eos: tokens.eos, eot: tokens.eot, nl: tokens.nl, addBos: tokens.addBos });
    this.vocabularySize = info.vocabularySize;
  }

  /** @internal What the loaded addon supports (cached). */
  get systemInfo(): NativeSystemInfo {
    return (this.#systemInfo ??= binding().systemInfo());
  }

  /** @internal */
  get native(): NativeModel {
    if (!this.#native) throw new DisposedError('This model has been disposed');
    return this.#native;
  }

  /** Whether {@link Model.dispose} has run. */
  get disposed(): boolean {
    return this.#native === undefined;
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
    return this.native.tokenize(text, addBos, parseSpecial);
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
    const work = this.native.tokenizeAsync(text, addBos, parseSpecial);
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
    this.#limits ??= this.native.tokenizerLimits();
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
    const id = this.#identity;
    if (!id) return;
    let st: { size: bigint; mtimeNs: bigint };
    try {
      st = fstatSync(id.fd, { bigint: true });
    } catch (error) {
      throw new ModelLoadError(`Cannot check the model file ${this.path}: ${(error as Error).message}`, { cause: error });
    }
    if (st.size !== id.size || st.mtimeNs !== id.mtimeNs) {
      throw new ModelLoadError(
        `The model file ${this.path} changed on disk after it was loaded (size ${id.size} -> ${st.size} bytes` +
          `${st.mtimeNs !== id.mtimeNs ? ', modified' : ''}); its memory-mapped weights are no longer valid. ` +
          'Dispose this model and load it again. To replace a model that is in use, write the new file next to ' +
          'it and rename it into place (the loaded model keeps the old file) instead of copying over it, or load ' +
          'with useMmap: false.',
      );
    }
  }

  /** Token ids to text. */
  detokenize(tokens: ArrayLike<number>, options?: DetokenizeOptions): string {
    const ids = v.tokens('tokens', tokens, this.vocabularySize);
    const o = v.options<DetokenizeOptions>('options', options, ['special']);
    const special = o.special === undefined ? false : v.boolean('special', o.special);
    return this.native.detokenize(ids, false, special);
  }

  /** The vocabulary's control and user-defined tokens by their text (`<|endofutterance|>` → 2049). */
  get specialTokens(): ReadonlyMap<string, number> {
    if (!this.#special) {
      const { ids, texts } = this.native.specialTokens();
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
    return this.native.isEog(token);
  }

  /** Creates an inference context (KV cache and compute buffers) on this model. */
  async createContext(options?: ContextOptions): Promise<Context> {
    const context = await createContext(this, options);
    this.#contexts.add(context);
    context.onDispose(() => this.#contexts.delete(context));
    return context;
  }

  /**
   * Creates a context that serves several generations at once (continuous batching over `parallel` slots),
   * for servers and batch jobs. See {@link ParallelContext}.
   */
  async createParallelContext(options?: ParallelContextOptions): Promise<ParallelContext> {
    const context = await createParallelContext(this, options);
    this.#contexts.add(context);
    context.onDispose(() => this.#contexts.delete(context));
    return context;
  }

  /** Runs `listener` once when the model is disposed. */
  onDispose(listener: () => void): void {
    this.#disposeListeners.add(listener);
  }

  /** Disposes the model's contexts (stopping what they run), then frees the weights. Safe to call twice. */
  async dispose(): Promise<void> {
    if (!this.#native) return;
    await Promise.all([...this.#contexts].map((c) => c.dispose()));
    // Tokenizations on worker threads hold the model; they are short (linear in their text).
    while (this.#tokenizing.size > 0) await Promise.all([...this.#tokenizing]);
    const native = this.#native;
    if (!native) return;
    this.#native = undefined;
    native.dispose();
    if (this.#identity) {
      identityCloser.unregister(this);
      closeIdentity(this.#identity);
      this.#identity = undefined;
    }
    for (const listener of this.#disposeListeners) listener();
    this.#disposeListeners.clear();
  }

  /** `await using model = await loadModel(...)` disposes it at the end of the scope. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}

/** The default thread count: every core this process may run on (not node-llama-cpp's fixed minimum of 4). */
export function defaultThreads(): number {
  return Math.max(1, availableParallelism());
}
