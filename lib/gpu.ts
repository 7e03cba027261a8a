// Devices, memory estimates and automatic GPU offload, through llama.cpp's common/fit.cpp (the addon's
// src/fit.cc): the model is "loaded" with no_alloc, which reads metadata and measures what every device would
// hold without allocating anything.
import { resolve } from 'node:path';
import { binding, type NativeFitParams } from './binding.js';
import { fromNative } from './errors.js';
import { readGguf } from './gguf/reader.js';
import { validateForLlama } from './gguf/validate.js';
import * as v from './validate.js';

/** A device llama.cpp can use, as {@link devices} lists it. */
export interface Device {
  index: number;
  name: string;
  description: string;
  type: 'cpu' | 'gpu' | 'igpu' | 'accel';
  /** Bytes free now. */
  free: number;
  total: number;
}

/** The devices llama.cpp can use in this build (the CPU build lists only the CPU). */
export function devices(): Device[] {
  return binding().devices();
}

/** Options of {@link estimateMemory}. */
export interface MemoryEstimateOptions {
  /** Layers on the GPU; default: all (llama.cpp's default). */
  gpuLayers?: number | 'max';
  /** Context size in tokens. Default: 4096. */
  contextSize?: number;
  /** Batch size (the physical batch is at most 512). Default: `min(512, contextSize)`. */
  batchSize?: number;
  /** Flash attention: `'auto'`, `true` or `false`. Default: llama.cpp's (`'auto'`). */
  flashAttention?: boolean | 'auto';
}

/** One row of {@link estimateMemory}: what one device (or the host) would hold. */
export interface DeviceMemory {
  /** Device name (CUDA0, ...) or "host" for system memory. */
  name: string;
  /** Weights, KV cache and compute buffers, in bytes. */
  model: number;
  context: number;
  compute: number;
  total: number;
  /** The device's free and total memory now (0 for the host where llama.cpp does not track it). */
  deviceFree: number;
  deviceTotal: number;
}

/** What llama.cpp's fit chose (see {@link GpuPlan}, which {@link Model.gpuPlan} reports). */
export interface FitResult {
  /** `fits`, or `doesNotFit` when even the smallest choice exceeds free memory. */
  status: 'fits' | 'doesNotFit' | 'error';
  gpuLayers: number;
  contextSize: number;
  tensorSplit: number[];
  /** Tensors kept elsewhere than their layer's device (MoE experts on the CPU, llama.cpp's --n-cpu-moe). */
  overrides: { pattern: string; buffer: string }[];
}

function fitParams(o: MemoryEstimateOptions): NativeFitParams {
  const p: NativeFitParams = {};
  if (o.gpuLayers !== undefined) p.gpuLayers = o.gpuLayers === 'max' ? -1 : v.integer('gpuLayers', o.gpuLayers, 0, 100_000);
  p.contextSize = o.contextSize === undefined ? 4096 : v.integer('contextSize', o.contextSize, 1, 1 << 24);
  p.batchSize = o.batchSize === undefined ? Math.min(512, p.contextSize as number) : v.integer('batchSize', o.batchSize, 1, 1 << 24);
  p.ubatchSize = Math.min(512, p.batchSize as number);
  if (o.flashAttention !== undefined) {
    const fa = v.oneOf('flashAttention', o.flashAttention, ['auto', true, false] as const);
    p.flashAttention = fa === 'auto' ? -1 : fa ? 1 : 0;
  }
  return p;
}

/**
 * What loading `path` with these settings would take on each device (weights, KV cache, compute buffers), by
 * llama.cpp's own accounting, without loading it.
 */
export async function estimateMemory(path: string, options?: MemoryEstimateOptions): Promise<DeviceMemory[]> {
  v.string('path', path, { allowEmpty: false });
  const o = v.options<MemoryEstimateOptions>('options', options, ['gpuLayers', 'contextSize', 'batchSize', 'flashAttention']);
  const full = resolve(path);
  validateForLlama(await readGguf(full));
  try {
    const rows = await binding().estimateMemory(full, fitParams(o));
    return rows.map((r) => ({
      name: r.name, model: r.model, context: r.context, compute: r.compute, total: r.model + r.context + r.compute,
      deviceFree: r.free, deviceTotal: r.total,
    }));
  } catch (error) {
    throw fromNative(error);
  }
}

/** @internal The most layers (and the MoE experts to keep on the CPU) that fit free device memory. */
export async function fitToMemory(path: string, options: { contextSize: number; marginBytes: number }): Promise<FitResult> {
  try {
    return await binding().fitParams(path, {
      contextSize: options.contextSize, marginBytes: options.marginBytes, minContextSize: options.contextSize,
    });
  } catch (error) {
    throw fromNative(error);
  }
}
