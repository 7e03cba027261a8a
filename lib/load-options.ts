// loadModel's options and their checks, done before anything is read.
import type { NativeLoadParams } from './binding.js';
import { checkPlacementRequest, type FitOptions, type PlacementOptions, type PlacementRequest } from './placement.js';
import { validateRpcServers } from './rpc.js';
import * as v from './validate.js';

/**
 * Options of {@link loadModel}. Unknown keys throw a `TypeError` naming the closest known one. `cpuMoe` and
 * `tensorOverrides` ({@link PlacementOptions}) place tensors by hand; with `gpuLayers: 'auto'` the plan places
 * them itself and they are refused.
 */
export interface LoadModelOptions extends PlacementOptions {
  /**
   * Layers to offload to the GPU (llama.cpp `-ngl`): a number, `'max'` for all of them, or `'auto'`: the
   * placement that fits the free GPU memory (at most `fit.budgetMiB`) with a context of `fit.contextSize` and a
   * safety margin, measured by llama.cpp's own fit (no out-of-memory abort): for MoE models, llama.cpp's fit
   * (experts of some layers in host memory, one layer possibly split), `--n-cpu-moe N` (the experts of the fewest
   * first layers) or whole layers, whichever reads fewest bytes from host memory per token, the host-side weights
   * read without mmap unless `useMmap` is given; the choice is in `model.gpuPlan`. Ignored by the CPU
   * build, except with `rpcServers`: then it counts the layers on the RPC servers ('auto' is not supported
   * with them). Default: `'max'`.
   */
  gpuLayers?: number | 'max' | 'auto';
  /** For gpuLayers 'auto': the context to leave room for (default 4096) and the margin per GPU (default 1024 MiB). */
  fit?: FitOptions;
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
  'gpuLayers', 'fit', 'cpuMoe', 'tensorOverrides', 'mainGpu', 'splitMode', 'tensorSplit', 'useMmap', 'useMlock', 'vocabOnly', 'checkTensors', 'rpcServers',
  'onProgress', 'signal', 'checkChatTemplate',
] as const;

/** @internal loadModel's options, checked, and the native parameters they give. */
export interface CheckedLoadOptions {
  o: Partial<LoadModelOptions>;
  params: NativeLoadParams;
  /** gpuLayers, cpuMoe, tensorOverrides and fit, checked: lib/gpu.ts placeWeights() turns them into params. */
  request: PlacementRequest;
  rpcServers: { host: string; port: number }[] | undefined;
  checkTemplate: boolean;
  onProgress: ((progress: number) => void) | undefined;
  signal: AbortSignal | undefined;
}

/** @internal Checks loadModel's options (`TypeError`/`RangeError`). */
export function checkLoadOptions(options: LoadModelOptions | undefined): CheckedLoadOptions {
  const o = v.options<LoadModelOptions>('options', options, LOAD_OPTIONS);
  const params: NativeLoadParams = {};
  if (o.mainGpu !== undefined) params.mainGpu = v.integer('mainGpu', o.mainGpu, 0, 127);
  if (o.splitMode !== undefined) params.splitMode = { none: 0, layer: 1, row: 2 }[v.oneOf('splitMode', o.splitMode, ['none', 'layer', 'row'] as const)];
  if (o.tensorSplit !== undefined) {
    if (!Array.isArray(o.tensorSplit)) throw v.typeError('array of numbers', 'tensorSplit', o.tensorSplit);
    params.tensorSplit = o.tensorSplit.map((x, i) => v.number(`tensorSplit[${i}]`, x, 0));
  }
  const request = checkPlacementRequest(o.gpuLayers, o.fit, o, 4096);
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
  return { o, params, request, rpcServers, checkTemplate, onProgress, signal };
}
