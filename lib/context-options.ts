// The options of both kinds of context and their one validator: Model.createContext and
// Model.createParallelContext differ only where the kind says so (slots and a shared cache for a parallel
// context, importance-matrix collection for a single one); defaults, ranges, the non-causal rule and the
// memory guard are the same code for both.
import { freemem } from 'node:os';
import type { ModelInfo, NativeContextParams } from './binding.js';
import { InsufficientMemoryError } from './errors.js';
import { kvCacheBytes, kvTypeId, type KvShape } from './memory.js';
import { defaultThreads } from './system.js';
import * as v from './validate.js';

/** Options of {@link Model.createContext}. */
export interface ContextOptions extends KvCacheOptions {
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

/** The KV cache's types, for both kinds of context. */
export interface KvCacheOptions {
  /**
   * Type of the KV cache's keys (llama.cpp `-ctk`): `'f16'`, `'f32'` (exact, twice the memory), `'bf16'`, or a
   * quantized type (`'q8_0'`, `'q5_1'`, `'q5_0'`, `'q4_1'`, `'q4_0'`, `'iq4_nl'`: less memory, less accuracy).
   * Default: `'f16'`.
   */
  cacheTypeK?: KvCacheType;
  /** Type of the KV cache's values (llama.cpp `-ctv`), as `cacheTypeK`; a quantized type needs flash attention. Default: `'f16'`. */
  cacheTypeV?: KvCacheType;
}

/** The KV cache types llama.cpp accepts for `-ctk`/`-ctv` (common/arg.cpp's kv_cache_types). */
export const KV_CACHE_TYPES = ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'iq4_nl', 'q5_0', 'q5_1'] as const;
export type KvCacheType = (typeof KV_CACHE_TYPES)[number];

/** Options of {@link Model.createParallelContext}. */
export interface ParallelContextOptions extends KvCacheOptions {
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

/** @internal The keys of ContextOptions. */
export const CONTEXT_OPTIONS = [
  'contextSize', 'batchSize', 'ubatchSize', 'threads', 'batchThreads', 'flashAttention', 'cacheTypeK', 'cacheTypeV', 'collectImatrix',
] as const satisfies readonly (keyof ContextOptions)[];

/** @internal The keys of ParallelContextOptions (the server passes them through as they are). */
export const PARALLEL_CONTEXT_OPTIONS = [
  'parallel', 'contextSize', 'unifiedCache', 'batchSize', 'ubatchSize', 'threads', 'batchThreads', 'flashAttention',
  'cacheTypeK', 'cacheTypeV',
] as const satisfies readonly (keyof ParallelContextOptions)[];

// Every option has its key in the list (a key missing there would be refused as unknown).
true satisfies Exclude<keyof ContextOptions, (typeof CONTEXT_OPTIONS)[number]> extends never ? true : never;
true satisfies Exclude<keyof ParallelContextOptions, (typeof PARALLEL_CONTEXT_OPTIONS)[number]> extends never ? true : never;

/**
 * What the validator reads of a model: a Model has all of it (declared here so that this file needs nothing of
 * lib/model.ts, which imports the contexts).
 */
export interface ContextModel extends KvShape {
  readonly info: Pick<ModelInfo, 'trainContextSize' | 'layers' | 'heads' | 'kvHeads' | 'embeddingSize'>;
  readonly systemInfo: { readonly gpuOffload: boolean };
  /** Whether a GPU or an RPC server holds weights (the default threads leave it a core). */
  readonly offloaded?: boolean;
}

/** The native parameters of a single context. */
export type SingleContextParams = NativeContextParams & { collectImatrix: boolean };
/** The native parameters of a parallel context. */
export type ParallelContextParams = NativeContextParams & { parallel: number; unifiedCache: boolean };

/**
 * @internal Checks the options of a context of either kind on `model` and returns its native parameters.
 * Throws `TypeError`/`RangeError` for bad options and {@link InsufficientMemoryError} for a KV cache that
 * cannot fit the memory of a machine without a GPU, before anything is allocated.
 */
export function checkContextOptions(model: ContextModel, options: unknown, kind: 'single'): SingleContextParams;
export function checkContextOptions(model: ContextModel, options: unknown, kind: 'parallel'): ParallelContextParams;
export function checkContextOptions(
  model: ContextModel,
  options: unknown,
  kind: 'single' | 'parallel',
): SingleContextParams | ParallelContextParams {
  const o = v.options<ContextOptions & ParallelContextOptions>(
    'options', options, kind === 'parallel' ? PARALLEL_CONTEXT_OPTIONS : CONTEXT_OPTIONS,
  );
  // A single context is one slot with a cache of its own.
  const parallel = kind === 'single' ? 1 : o.parallel === undefined ? 4 : v.integer('parallel', o.parallel, 1, 256);
  const unifiedCache = kind === 'parallel' && o.unifiedCache !== undefined ? v.boolean('unifiedCache', o.unifiedCache) : false;
  const perSlot = Math.min(model.info.trainContextSize || 4096, 4096);
  const contextSize =
    o.contextSize === undefined ? perSlot * (unifiedCache ? 1 : parallel) : v.integer('contextSize', o.contextSize, parallel, 1 << 24);
  const batchSize = o.batchSize === undefined ? Math.min(2048, contextSize) : v.integer('batchSize', o.batchSize, 1, 1 << 24);
  // llama.cpp would silently raise a smaller batch to one token per slot, and cut a larger one to the context.
  if (batchSize < parallel) throw v.rangeError(`integer at least parallel (${parallel})`, 'batchSize', batchSize);
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
  const threads = o.threads === undefined ? defaultThreads(model.offloaded === true) : v.integer('threads', o.threads, 1, 512);
  const batchThreads = o.batchThreads === undefined ? threads : v.integer('batchThreads', o.batchThreads, 1, 512);
  const fa = o.flashAttention === undefined ? 'auto' : v.oneOf('flashAttention', o.flashAttention, ['auto', true, false] as const);
  const flashAttention = fa === 'auto' ? -1 : fa ? 1 : 0;
  const cacheTypeK = o.cacheTypeK === undefined ? 'f16' : v.oneOf('cacheTypeK', o.cacheTypeK, KV_CACHE_TYPES);
  const cacheTypeV = o.cacheTypeV === undefined ? 'f16' : v.oneOf('cacheTypeV', o.cacheTypeV, KV_CACHE_TYPES);
  // llama.cpp refuses a quantized V cache without flash attention (its context creation fails): say so first.
  if (fa === false && !['f32', 'f16', 'bf16'].includes(cacheTypeV)) {
    throw v.rangeError("'f32', 'f16' or 'bf16' without flash attention (a quantized V cache needs flashAttention)", 'cacheTypeV', cacheTypeV);
  }
  const collectImatrix = kind === 'single' && o.collectImatrix !== undefined ? v.boolean('collectImatrix', o.collectImatrix) : false;
  // llama.cpp allocates the KV cache with malloc and then clears it: under Linux's overcommit a size far
  // beyond memory does not fail cleanly, the OOM killer ends the process. Refuse it here.
  if (!model.systemInfo.gpuOffload) {
    const kv = kvCacheBytes(model, contextSize, cacheTypeK, cacheTypeV);
    const free = freemem();
    if (kv > free) {
      throw new InsufficientMemoryError(
        `A context of ${contextSize} tokens needs ${(kv / 2 ** 30).toFixed(2)} GiB for its KV cache, but only ` +
          `${(free / 2 ** 30).toFixed(2)} GiB of memory is available`,
      );
    }
  }
  const params = {
    contextSize, batchSize, ubatchSize, threads, batchThreads, flashAttention, typeK: kvTypeId(cacheTypeK), typeV: kvTypeId(cacheTypeV),
  } as const;
  return kind === 'single' ? { ...params, collectImatrix } : { parallel, ...params, unifiedCache };
}
