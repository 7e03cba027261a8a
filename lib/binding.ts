// Finds and loads the native addon, lazily: `huozi-gguf --help` must not pay for loading llama.cpp.
// Order (see binding()): HUOZI_BINDING, the CUDA package when there is an NVIDIA device, build/Release (a source
// build), prebuilds/<platform>-<arch>/ (node-gyp-build's layout and names). HUOZI_BACKEND=cpu|cuda forces one.
import { existsSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BindingError } from './errors.js';

// The addon's contract: every export of src/addon.cc (with src/fit.cc and src/rpc.cc) and every method of its
// objects (src/model.cc, src/context.cc, src/parallel.cc), declared once, with the shapes the C++ side builds.
// The rest of lib/ calls the addon only through these types.

/** Which backend the loaded addon was built for, and what llama.cpp detected on this machine ({@link systemInfo}). */
export interface SystemInfo {
  backend: 'cpu' | 'cuda' | 'metal';
  llamaCpp: string;
  /** A local GPU (RPC devices do not count). */
  gpuOffload: boolean;
  /** The RPC backend is built in (GGML_RPC). */
  rpc: boolean;
  mmap: boolean;
  mlock: boolean;
  maxDevices: number;
  /** Prebuilt binaries (HUOZI_BACKEND_DL): the folder ggml loaded its backends from. */
  backendsDir?: string;
  /**
   * Prebuilt binaries: the CPU backend in use (`libggml-cpu-<level>.so`), the kernel set ggml picked for this CPU
   * or the one `HUOZI_CPU_VARIANT=<level>` asked for.
   */
  cpuBackend?: string;
  /** Prebuilt binaries: why the CUDA backend next to the addon did not load, if it did not. */
  backendError?: string;
  /** Which addon file answered (added by the loader, lib/binding.ts). */
  addon?: AddonOrigin;
}

/** Shape and facts llama.cpp reports about a loaded model ({@link Model.info}). */
export interface ModelInfo {
  description: string;
  size: number;
  parameters: number;
  trainContextSize: number;
  embeddingSize: number;
  layers: number;
  heads: number;
  kvHeads: number;
  vocabularySize: number;
  fileType: string;
  chatTemplate: string | null;
}

/** NativeModel.info(): ModelInfo, with the special tokens and every metadata key. */
export interface NativeModelInfo extends ModelInfo {
  tokens: { bos: number | null; eos: number | null; eot: number | null; nl: number | null; addBos: boolean; addEos: boolean };
  metadata: Record<string, string>;
}

/** The parameters of a generation, as lib/generation.ts checked them (src/sampler.cc, src/generation.h). */
export interface NativeGenerateParams {
  /** ParallelContext requests only: the adapters to compute with (src/lora.cc). */
  loras?: NativeLoras;
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repeatPenalty?: number;
  repeatLastN?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
  seed?: number;
  maxTokens?: number;
  stopTokens?: Int32Array;
  stopStrings?: string[];
  stopAtEog?: boolean;
  reuseCache?: boolean;
  streamIntervalMs?: number;
  /** A Grammar's native handle (src/grammar.cc). */
  grammar?: NativeGrammar;
  /** -100 is already -Infinity. */
  logitBias?: { tokens: Int32Array; biases: Float32Array };
  /** Present: record logprobs with this many alternatives. */
  topLogprobs?: number;
  postSamplingProbs?: boolean;
}

/** A compiled grammar, held natively (an External of src/grammar.cc's CompiledGrammar). */
export type NativeGrammar = { readonly __nativeGrammar: unique symbol };

/** One generated token's logprob entry (src/sampler.cc LogprobsToJs); lib/generation.ts's TokenLogprob. */
export interface NativeTokenLogprob {
  token: number;
  text: string;
  bytes: number[];
  logprob: number;
  top: { token: number; text: string; bytes: number[]; logprob: number }[];
}

export interface NativeGenerateResult {
  tokens: Int32Array;
  text: string;
  stopReason: 'eog' | 'stopToken' | 'stopString' | 'maxTokens' | 'contextFull' | 'abort';
  stopToken: number | null;
  stopString: string | null;
  reusedTokens: number;
  evaluatedTokens: number;
  promptMs: number;
  generateMs: number;
  /** Only when logprobs were asked for. */
  logprobs?: NativeTokenLogprob[];
}

/** What llama.cpp allocated for a context and its model on one device (Context.memory, ParallelContext.memory). */
export interface NativeMemoryRow {
  device: string;
  model: number;
  context: number;
  compute: number;
}

/** The parameters of both kinds of context (src/context.cc, ContextParamsFromJs), as lib/context-options.ts checked them. */
export interface NativeContextParams {
  contextSize: number;
  batchSize: number;
  ubatchSize: number;
  threads: number;
  batchThreads: number;
  /** -1: auto, 0: off, 1: on. */
  flashAttention: -1 | 0 | 1;
  /** The KV cache's ggml types (context-options.ts KV_CACHE_TYPES); default f16. */
  typeK?: number;
  typeV?: number;
}

export interface NativeContext {
  info(): { contextSize: number; batchSize: number; ubatchSize: number; threads: number; batchThreads: number };
  tokens(): Int32Array;
  evaluate(tokens: Int32Array, logits: 0 | 1 | 2 | 3): Promise<Float32Array | undefined>;
  generate(
    prompt: Int32Array,
    params: NativeGenerateParams,
    onText?: (text: string, logprobs?: NativeTokenLogprob[]) => void,
  ): Promise<NativeGenerateResult>;
  eraseFrom(position: number): void;
  saveState(): Promise<{ data: Buffer; tokens: Int32Array }>;
  imatrix(): { name: string; values: Float32Array; counts: Float32Array }[];
  memory(): NativeMemoryRow[];
  loadState(data: Buffer, tokens: Int32Array): Promise<void>;
  abort(): void;
  setThreads(threads: number, batchThreads: number): void;
  /** Applies the adapters (none: the base model); true when that changed them, which empties the cache. */
  setLoras(loras: NativeLoras): boolean;
  dispose(): void;
  readonly disposed: boolean;
}

/** A finished request of a parallel context: a generation's result, with its slot and its wait for one. */
export interface NativeParallelResult extends NativeGenerateResult {
  queueMs: number;
  slot: number;
}

/** What a parallel context's loop hands to JS (src/parallel.cc, Deliver): text, then results or failures. */
export type NativeEvent =
  | { id: number; text: string; logprobs?: NativeTokenLogprob[] }
  | { id: number; result: NativeParallelResult }
  | { id: number; code: string; message: string; result?: NativeParallelResult };

export interface NativeParallelContext {
  /** ubatchSize, threads and batchThreads are absent once the context is disposed. */
  info(): {
    contextSize: number; slotContextSize: number; parallel: number; batchSize: number; ubatchSize?: number; threads?: number;
    batchThreads?: number;
  };
  /** Requests of one `group` (not 0) with the same prompt evaluate it once. */
  submit(id: number, prompt: Int32Array, params: NativeGenerateParams, group?: number): void;
  cancel(id: number): void;
  stats(): {
    busySlots: number; waiting: number; outstanding: number; promptTokens: number; generatedTokens: number; reusedTokens: number; sharedTokens: number;
    decodeCalls: number; completed: number; cancelled: number; failed: number;
  };
  memory(): NativeMemoryRow[];
  dispose(): Promise<void>;
  readonly disposed: boolean;
}

/** createEmbeddingContext's parameters (src/embedding.cc), as lib/embedding.ts checked them. */
export interface NativeEmbeddingParams extends NativeContextParams {
  /** -1: the model's (GGUF `<arch>.pooling_type`), 0: none, 1: mean, 2: cls, 3: last. */
  pooling: -1 | 0 | 1 | 2 | 3;
}

export interface NativeEmbeddingContext {
  info(): { contextSize: number; batchSize: number; threads: number; maxSequences: number; pooling: 0 | 1 | 2 | 3; dimension: number };
  /** One Float32Array per input: `dimension` values, or `dimension` per token with pooling none. normalize: -1 none, 2 L2. */
  embed(inputs: Int32Array[], normalize: -1 | 2): Promise<Float32Array[]>;
  memory(): NativeMemoryRow[];
  abort(): void;
  dispose(): void;
  readonly disposed: boolean;
}

export interface NativeModel {
  info(): NativeModelInfo;
  tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Int32Array;
  tokenizeAsync(text: string, addSpecial: boolean, parseSpecial: boolean): Promise<Int32Array>;
  tokenizerLimits(): { type: 'spm' | 'bpe' | 'wpm' | 'ugm' | 'rwkv' | 'other'; maxTokenBytes: number };
  detokenize(tokens: Int32Array, removeSpecial: boolean, unparseSpecial: boolean): string;
  tokenPieces(tokens: Int32Array, special: boolean): Buffer[];
  isEog(token: number): boolean;
  specialTokens(): { ids: Int32Array; texts: string[] };
  createContext(params: NativeContextParams & { collectImatrix: boolean }): Promise<NativeContext>;
  createParallelContext(
    params: NativeContextParams & { parallel: number; unifiedCache: boolean },
    onEvents: (events: NativeEvent[]) => void,
  ): Promise<NativeParallelContext>;
  /**
   * Throws ERR_HUOZI_BUSY while contexts live; otherwise drops the model's reference to its weights and resolves
   * once they are freed (on the libuv pool: unmapping a large file or freeing GPU buffers takes seconds).
   */
  dispose(): Promise<void>;
  readonly disposed: boolean;
  /** src/lora.cc: llama_adapter_lora_init on the libuv pool (lib/lora.ts checked the file first). */
  loadLora(path: string): Promise<NativeLora>;
}

/** A LoRA adapter (src/lora.cc). */
export interface NativeLora {
  info(): { path: string; metadata: Record<string, string> };
  dispose(): void;
  readonly disposed: boolean;
}

/** Adapters with their scales, as a context applies them (lib/lora.ts checkLoras). */
export type NativeLoras = { adapter: NativeLora; scale: number }[];

/** loadModel's parameters (src/workers/load_model.cc), as lib/model.ts checked them. */
export interface NativeLoadParams {
  /** -1: every layer. */
  gpuLayers?: number;
  mainGpu?: number;
  /** 0: none, 1: layer, 2: row. */
  splitMode?: number;
  tensorSplit?: number[];
  useMmap?: boolean;
  useMlock?: boolean;
  vocabOnly?: boolean;
  checkTensors?: boolean;
  rpcServers?: string[];
  overrides?: { pattern: string; buffer: string }[];
}

/** The parameters of estimateMemory and fitParams (src/fit.cc, ParseFitArgs). */
export interface NativeFitParams {
  gpuLayers?: number;
  contextSize?: number;
  batchSize?: number;
  ubatchSize?: number;
  flashAttention?: number;
  marginBytes?: number;
  minContextSize?: number;
  /** The most a plan may use on every GPU, and per device name (src/fit.cc Margins). */
  budgetBytes?: number;
  budgets?: Record<string, number>;
  /** RPC servers, resolved "ip:port" (estimateMemory). */
  rpcServers?: string[];
  /** Tensor overrides (estimateMemory): pattern → device or buffer name. */
  overrides?: { pattern: string; buffer: string }[];
}

/** llama_model_quantize's parameters (src/quantize.cc), as lib/quantize/quantize.ts and child.ts build them. */
export interface NativeQuantizeParams {
  ftype: number;
  threads?: number;
  allowRequantize?: boolean;
  leaveOutputTensor?: boolean;
  onlyCopy?: boolean;
  pure?: boolean;
  outputTensorType?: number;
  tokenEmbeddingType?: number;
  dryRun?: boolean;
  tensorTypes?: { pattern: string; type: number }[];
  imatrix?: { name: string; data: Float32Array }[];
  metadata?: { key: string; value: string | number }[];
  /** The file descriptor that gets one `{"tensor":i,"of":n}` line per tensor. */
  progressFd?: number;
}

export interface NativeBinding {
  loadModel(
    path: string,
    params: NativeLoadParams,
    onProgress?: (progress: number) => void,
  ): { promise: Promise<NativeModel>; cancel(): void };
  systemInfo(): SystemInfo;
  /** src/embedding.cc: an embedding context on `model`. */
  createEmbeddingContext(model: NativeModel, params: NativeEmbeddingParams): Promise<NativeEmbeddingContext>;
  ggmlTypes(): { id: number; name: string; blockSize: number; typeSize: number }[];
  /** Runs llama_model_quantize on the calling thread (lib/quantize/child.ts, in a process of its own). */
  quantize(input: string, output: string, params: NativeQuantizeParams): { quantMiB: number; requiresImatrix: boolean };
  devices(): { index: number; name: string; description: string; type: 'cpu' | 'gpu' | 'igpu' | 'accel'; free: number; total: number }[];
  estimateMemory(
    path: string,
    params: NativeFitParams,
  ): Promise<{ name: string; free: number; total: number; model: number; context: number; compute: number }[]>;
  fitParams(
    path: string,
    params: NativeFitParams,
  ): Promise<{
    status: 'fits' | 'doesNotFit' | 'error'; gpuLayers: number; contextSize: number; tensorSplit: number[];
    overrides: { pattern: string; buffer: string }[];
  }>;
  /** Parses and validates GBNF (src/grammar.cc); throws ERR_HUOZI_GRAMMAR with position, rule, limit. */
  grammarCompile(gbnf: string, root: string, validationText?: string): NativeGrammar;
  /** llama.cpp's JSON Schema to GBNF converter; throws ERR_HUOZI_GRAMMAR. */
  jsonSchemaToGrammar(json: string): string;
  /** Starts ggml_backend_rpc_start_server on a thread of its own; onExit only if it ever returns. */
  rpcStartServer(
    endpoint: string,
    cacheDir: string | null,
    threads: number,
    devices: string[] | null,
    onExit: (why: string) => void,
  ): { devices: { name: string; description: string; totalBytes: number; freeBytes: number }[] };
}

/** The package's root folder (where package.json is), from dist/ or lib/. */
export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Where the loaded addon came from, what was tried before it, and what went wrong on the way. */
export interface AddonOrigin {
  /** The .node file that was loaded. */
  path: string;
  /** explicit (HUOZI_BINDING), cuda (@huozi-gguf/linux-x64-cuda), source (build/Release) or prebuild (prebuilds/). */
  variant: 'explicit' | 'cuda' | 'source' | 'prebuild';
  /** One line per candidate that was passed over (for example a CUDA package that did not find a device). */
  warnings: string[];
}

/** The scoped package with the CUDA build (same version, optionalDependencies). */
export const CUDA_PACKAGE = `@huozi-gguf/${process.platform}-${process.arch}-cuda`;

/** What to run to build the addon from source, as the README documents it. */
export const BUILD_FROM_SOURCE =
  'npm install --save-dev cmake-js node-api-headers && HUOZI_BUILD_FROM_SOURCE=1 npm rebuild huozi-gguf --foreground-scripts';

let cached: NativeBinding | undefined;
let origin: AddonOrigin | undefined;

/** Where the addon was loaded from; undefined until something has needed it. */
export function addonOrigin(): AddonOrigin | undefined {
  return origin;
}

// Cheap signs of an NVIDIA driver, without loading CUDA: the kernel module's device list, its control device,
// or WSL2's GPU paravirtualization with the driver's libcuda.
function nvidiaDevicePresent(): boolean {
  try {
    if (existsSync('/proc/driver/nvidia/gpus') && readdirSync('/proc/driver/nvidia/gpus').length > 0) return true;
  } catch {
    // unreadable: fall through to the other signs
  }
  return existsSync('/dev/nvidiactl') || (existsSync('/dev/dxg') && existsSync('/usr/lib/wsl/lib/libcuda.so.1'));
}

function isMusl(): boolean {
  const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
  return process.platform === 'linux' && !report?.header?.glibcVersionRuntime;
}

// prebuilds/<platform>-<arch>/*.node as node-gyp-build names them (tags between dots: napi, glibc/musl, ...).
function prebuildsIn(dir: string): string[] {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith('.node'));
  } catch {
    return [];
  }
  const libc = isMusl() ? 'musl' : 'glibc';
  return files
    .filter((f) => !f.split('.').some((tag) => (tag === 'glibc' || tag === 'musl') && tag !== libc))
    .map((f) => join(dir, f));
}

function firstLine(error: unknown): string {
  return String((error as Error)?.message ?? error).split('\n')[0]!;
}

/**
 * Loads the addon once. Order: HUOZI_BINDING (an explicit .node path, nothing else is tried); then, unless
 * HUOZI_BACKEND=cpu, the CUDA package when it is installed and an NVIDIA device is present (HUOZI_BACKEND=cuda
 * insists on it); then build/Release (a source build); then prebuilds/<platform>-<arch>/ (the portable CPU
 * prebuild). A CUDA addon that loads but finds no CUDA device is still used (it carries the CPU backends too),
 * with a warning in systemInfo().addon.warnings, printed when HUOZI_LOG is set.
 */
export function binding(): NativeBinding {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const tried: string[] = [];
  const warnings: string[] = [];
  const attempt = (path: string, variant: AddonOrigin['variant']): NativeBinding | undefined => {
    if (!existsSync(path)) {
      tried.push(`${path}: not there`);
      return undefined;
    }
    try {
      const b = require(path) as NativeBinding;
      // A prebuilt addon loads even when its CPU backend cannot (libgomp.so.1 missing), and then nothing works.
      const error = b.systemInfo().backendError;
      if (error?.includes('no CPU backend')) {
        tried.push(`${path}: ${error}`);
        return undefined;
      }
      origin = { path, variant, warnings };
      return b;
    } catch (error) {
      tried.push(`${path}: ${firstLine(error)}`);
      return undefined;
    }
  };
  const fail = (why: string, cause?: unknown): never => {
    throw new BindingError(
      `huozi-gguf could not load its native addon for ${process.platform}-${process.arch} (Node ${process.version}): ${why}\n` +
        `Tried:\n${tried.map((t) => `  - ${t}`).join('\n') || '  (nothing)'}\n` +
        (tried.some((t) => t.includes('libgomp'))
          ? 'The prebuilt addon needs OpenMP\'s runtime, libgomp.so.1: apt-get install libgomp1 (Debian, Ubuntu), dnf install libgomp (Fedora).\n'
          : '') +
        `Prebuilt binaries exist for linux-x64 (glibc); elsewhere, build from source (needs cmake >= 3.19 and a ` +
        `C++17 compiler; about 10 minutes on two cores), in your project:\n  ${BUILD_FROM_SOURCE}`,
      cause === undefined ? undefined : { cause },
    );
  };

  const explicit = process.env.HUOZI_BINDING;
  const forced = process.env.HUOZI_BACKEND?.toLowerCase();
  if (forced !== undefined && forced !== '' && forced !== 'cpu' && forced !== 'cuda') {
    throw new BindingError(`Expected HUOZI_BACKEND to be cpu or cuda but received "${process.env.HUOZI_BACKEND}"`);
  }
  let loaded: NativeBinding | undefined;
  if (explicit) {
    loaded = attempt(explicit, 'explicit') ?? fail('HUOZI_BINDING names an addon that does not load');
  } else {
    if (forced !== 'cpu') {
      let cudaAddon: string | undefined;
      let cudaMissing: string | undefined;
      try {
        const manifest = require.resolve(`${CUDA_PACKAGE}/package.json`);
        const { version } = require(manifest) as { version: string };
        const ours = (require(join(packageRoot, 'package.json')) as { version: string }).version;
        // The addon's functions change between versions: only the matching build may answer.
        if (version === ours) cudaAddon = join(dirname(manifest), 'bin', 'huozi_gguf.node');
        else cudaMissing = `${CUDA_PACKAGE}@${version} is installed but huozi-gguf is ${ours}`;
      } catch {
        cudaMissing = `${CUDA_PACKAGE} is not installed (npm install ${CUDA_PACKAGE})`;
      }
      if (cudaMissing) tried.push(cudaMissing);
      if (cudaAddon && (forced === 'cuda' || nvidiaDevicePresent())) {
        const before = tried.length;
        loaded = attempt(cudaAddon, 'cuda');
        const info = loaded?.systemInfo();
        if (!loaded) {
          if (forced === 'cuda') fail(`HUOZI_BACKEND=cuda, but ${CUDA_PACKAGE} did not load`);
          warnings.push(`${CUDA_PACKAGE} did not load (${tried[before]}); using the CPU addon`);
        } else if (info?.backend !== 'cuda') {
          const reason = `${CUDA_PACKAGE} loaded but CUDA did not (${info?.backendError ?? 'no CUDA device'}); running on the CPU`;
          if (forced === 'cuda') fail(reason);
          warnings.push(reason);
        }
      } else if (cudaAddon) {
        tried.push(`${cudaAddon}: skipped, no NVIDIA device (/proc/driver/nvidia/gpus); HUOZI_BACKEND=cuda forces it`);
      } else if (forced === 'cuda') {
        fail(`HUOZI_BACKEND=cuda, but ${cudaMissing}`);
      } else if (cudaMissing?.includes(' is installed but ') && nvidiaDevicePresent()) {
        warnings.push(`${cudaMissing}: not using it`);
      }
    }
    loaded ??= attempt(join(packageRoot, 'build', 'Release', 'huozi_gguf.node'), 'source');
    const prebuilds = join(packageRoot, 'prebuilds', `${process.platform}-${process.arch}`);
    const files = loaded ? [] : prebuildsIn(prebuilds);
    if (!loaded && files.length === 0) tried.push(`${prebuilds}/: no prebuilt addon for this platform`);
    for (const file of files) loaded ??= attempt(file, 'prebuild');
    if (!loaded) fail('no candidate loaded');
  }
  if (warnings.length > 0 && process.env.HUOZI_LOG) {
    for (const w of warnings) process.stderr.write(`huozi-gguf: ${w}\n`);
  }
  // systemInfo() also says which addon answered, so a silent CPU fallback is visible.
  const native = loaded!;
  const nativeInfo = native.systemInfo.bind(native);
  native.systemInfo = () => ({ ...nativeInfo(), addon: origin });
  cached = native;
  return cached;
}
