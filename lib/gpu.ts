// Devices, memory estimates and automatic GPU offload, through llama.cpp's common/fit.cpp (the addon's
// src/fit.cc): the model is "loaded" with no_alloc, which reads metadata and measures what every device would
// hold without allocating anything.
import { resolve } from 'node:path';
import { binding, type NativeFitParams } from './binding.js';
import { fromNative } from './errors.js';
import { readGguf } from './gguf/reader.js';
import { validateForLlama } from './gguf/validate.js';
import {
  checkPlacementRequest, expertPattern, placementCost, placementOverrides, weightLayout, type FitOptions, type NativeOverride, type PlacementCost,
  type PlacementOptions, type PlacementRequest, type WeightLayout,
} from './placement.js';
import { prepareRpcServers, validateRpcServers } from './rpc.js';
import * as v from './validate.js';

const MiB = 2 ** 20;

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

/** Options of {@link estimateMemory}: those of a load ({@link PlacementOptions}: `cpuMoe`, `tensorOverrides`) and of a context. */
export interface MemoryEstimateOptions extends PlacementOptions {
  /** Layers on the GPU, as loadModel's (`'auto'`: the plan loadModel would choose, in {@link MemoryPlan.plan}); default: all. */
  gpuLayers?: number | 'max' | 'auto';
  /** For `gpuLayers: 'auto'`, as loadModel's `fit` (its `contextSize` defaults to this estimate's). */
  fit?: FitOptions;
  /** RPC servers whose devices take layers, as loadModel's (not with `gpuLayers: 'auto'`). */
  rpcServers?: string[];
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
 * @internal Whether a load can offload at all: a GPU of this machine, or `rpcServers` RPC servers. Without one
 * llama.cpp keeps every layer in host memory whatever gpuLayers says (the cost model must know).
 */
export function hasDevice(rpcServers: number): boolean {
  return rpcServers > 0 || devices().some((d) => d.type !== 'cpu');
}

/** What {@link planMemory} answers: the placement and what it would take on each device. */
export interface MemoryPlan {
  /** How the weights would be placed: by `gpuLayers: 'auto'` or by `cpuMoe` / `tensorOverrides` (else undefined). */
  plan: GpuPlan | undefined;
  /** Weights, KV cache and compute per device for that placement (the last row: host memory). */
  devices: DeviceMemory[];
}

/**
 * What loading `path` with these settings would take on each device (weights, KV cache, compute buffers), by
 * llama.cpp's own accounting, without loading it. See {@link planMemory} for the placement with it.
 */
export async function estimateMemory(path: string, options?: MemoryEstimateOptions): Promise<DeviceMemory[]> {
  return (await planMemory(path, options)).devices;
}

/**
 * The placement loadModel would choose with these options (`gpuLayers: 'auto'` with `fit`, or `cpuMoe` /
 * `tensorOverrides`) and what it would take on each device, without loading anything.
 */
export async function planMemory(path: string, options?: MemoryEstimateOptions): Promise<MemoryPlan> {
  v.string('path', path, { allowEmpty: false });
  const o = v.options<MemoryEstimateOptions>('options', options, [
    'gpuLayers', 'contextSize', 'batchSize', 'flashAttention', 'cpuMoe', 'tensorOverrides', 'fit', 'rpcServers',
  ]);
  const params = fitParams(o);
  const request = checkPlacementRequest(o.gpuLayers, o.fit, o, params.contextSize!);
  const servers = o.rpcServers === undefined ? undefined : validateRpcServers(o.rpcServers);
  if (servers?.length && request.gpuLayers === 'auto') throw v.rangeError('a number or "max" with rpcServers', 'gpuLayers', o.gpuLayers);
  const full = resolve(path);
  const gguf = await readGguf(full);
  validateForLlama(gguf);
  if (servers?.length) params.rpcServers = await prepareRpcServers(servers);
  const placed = await placeWeights(full, weightLayout(gguf), request, hasDevice(servers?.length ?? 0));
  params.gpuLayers = placed.gpuLayers;
  if (placed.overrides.length > 0) params.overrides = placed.overrides;
  try {
    const rows = await binding().estimateMemory(full, params);
    const devices = rows.map((r) => ({
      name: r.name, model: r.model, context: r.context, compute: r.compute, total: r.model + r.context + r.compute,
      deviceFree: r.free, deviceTotal: r.total,
    }));
    return { plan: placed.plan, devices };
  } catch (error) {
    throw fromNative(error);
  }
}

/**
 * How the model's weights were placed on the devices: by `gpuLayers: 'auto'` (`chosenBy: 'fit'`), or by the
 * `cpuMoe` / `tensorOverrides` options (`chosenBy: 'options'`). `model.gpuPlan` is undefined for a plain
 * `gpuLayers` number or `'max'`.
 */
export interface GpuPlan {
  chosenBy: 'fit' | 'options';
  /** Layers placed on the GPU(s) (-1: all of them). */
  gpuLayers: number;
  /** Tensors kept on another device than their layer's (MoE experts on the CPU), first match first. */
  overrides: { pattern: string; buffer: string }[];
  /** fit: the context size the plan leaves room for (`fit.contextSize`). */
  contextSize?: number;
  /** fit: `fits`, `doesNotFit` (even the smallest choice exceeds free memory) or `error`. */
  status?: 'fits' | 'doesNotFit' | 'error';
  /** fit: the most memory it could use per GPU (`fit.budgetMiB`), when capped. */
  budgetMiB?: number | Record<string, number>;
  /** fit: the placements it weighed, with what each reads from host memory per generated token; it took the least. */
  candidates?: PlanCandidate[];
  /** What the placement leaves in host memory and reads from there per generated token (docs/gpu.md). */
  cost: PlacementCost;
}

/**
 * @internal The one placement core of loadModel and planMemory: a manual placement checked against the file's
 * tensors, or the plan of 'auto'; the native gpuLayers (-1: all), overrides and tensor split it gives.
 */
export async function placeWeights(
  path: string,
  layout: WeightLayout,
  r: PlacementRequest,
  offloads: boolean,
): Promise<{ gpuLayers: number; overrides: NativeOverride[]; tensorSplit: number[] | undefined; plan: GpuPlan | undefined }> {
  if (r.gpuLayers !== 'auto') {
    const overrides = placementOverrides(r.placement, layout.tensors.map((t) => t.name), layout.layers);
    const plan: GpuPlan | undefined = overrides.length === 0 ? undefined : {
      chosenBy: 'options', gpuLayers: r.gpuLayers, overrides, cost: placementCost(layout, offloads ? r.gpuLayers : 0, overrides),
    };
    return { gpuLayers: r.gpuLayers, overrides, tensorSplit: undefined, plan };
  }
  const fitted = await planPlacement(path, layout, { contextSize: r.fitContext, marginMiB: r.fitMargin, budgetMiB: r.fitBudget });
  const plan: GpuPlan = {
    chosenBy: 'fit', gpuLayers: fitted.gpuLayers, overrides: fitted.overrides, contextSize: fitted.contextSize, status: fitted.status,
    ...(r.fitBudget === undefined ? {} : { budgetMiB: r.fitBudget }), candidates: fitted.candidates,
    cost: placementCost(layout, offloads ? fitted.gpuLayers : 0, fitted.overrides),
  };
  const split = fitted.tensorSplit.some((x) => x > 0) ? fitted.tensorSplit : undefined;
  return { gpuLayers: fitted.gpuLayers, overrides: fitted.overrides, tensorSplit: split, plan };
}

/**
 * What a process uses on a GPU beyond the buffers llama.cpp accounts for (the CUDA context, cuBLAS workspaces,
 * the allocator's slack): measured as 691-692 MiB on an H200 for every setting (docs/gpu.md, "estimate / ours").
 * A budget is for what the process uses as nvidia-smi shows it, so the plan's buffers get the budget less this.
 */
export const GPU_OVERHEAD_MIB = 768;

/** A budget in MiB as the bytes the plan's buffers may take. */
function planBytes(budgetMiB: number): number {
  return Math.max(0, Math.round((budgetMiB - GPU_OVERHEAD_MIB) * MiB));
}

/**
 * @internal The most layers (and the MoE experts to keep on the CPU) that fit free device memory, leaving
 * `marginMiB` free on each GPU and using at most `budgetMiB` (for every GPU, or per device name).
 */
export async function fitToMemory(
  path: string,
  options: { contextSize: number; marginMiB: number; budgetMiB?: number | Record<string, number> },
): Promise<FitResult> {
  const { budgetMiB } = options;
  const params: NativeFitParams = {
    contextSize: options.contextSize, marginBytes: Math.round(options.marginMiB * MiB), minContextSize: options.contextSize,
  };
  if (typeof budgetMiB === 'number') {
    params.budgetBytes = planBytes(budgetMiB);
  } else if (budgetMiB !== undefined) {
    const gpus = devices().filter((d) => d.type !== 'cpu').map((d) => d.name);
    params.budgets = {};
    for (const [name, mib] of Object.entries(budgetMiB)) {
      if (!gpus.includes(name)) throw v.rangeError(`a GPU of this machine (${gpus.join(', ') || 'none'})`, `fit.budgetMiB.${name}`, name);
      params.budgets[name] = planBytes(mib);
    }
  }
  try {
    return await binding().fitParams(path, params);
  } catch (error) {
    throw fromNative(error);
  }
}

/** One placement `gpuLayers: 'auto'` weighed (see {@link GpuPlan}). */
export interface PlanCandidate {
  /** `experts`: llama.cpp's fit (every layer's attention and KV on the GPU, as many layers' experts as fit, the
   * rest of the experts in host memory, one layer's possibly split); `layers`: whole layers only (llama.cpp
   * `-ngl`); `cpuMoe`: every layer on the GPU but the experts of the fewest first layers that fit (llama.cpp
   * `--n-cpu-moe N`). */
  family: 'experts' | 'layers' | 'cpuMoe';
  gpuLayers: number;
  overrides: { pattern: string; buffer: string }[];
  /** What it leaves in host memory, and what a generated token reads from there. */
  cost: PlacementCost;
}

/**
 * @internal `gpuLayers: 'auto'`: llama.cpp's fit, and for a MoE model on one GPU also the most whole layers that
 * fit the same memory; the one whose generated token reads fewer bytes from host memory wins (host memory is
 * the bottleneck of a split model: docs/gpu.md), llama.cpp's fit on a tie.
 */
export async function planPlacement(
  path: string,
  layout: WeightLayout,
  options: { contextSize: number; marginMiB: number; budgetMiB?: number | Record<string, number> },
): Promise<FitResult & { candidates: PlanCandidate[] }> {
  const fitted = await fitToMemory(path, options);
  const candidates: PlanCandidate[] = [
    { family: 'experts', gpuLayers: fitted.gpuLayers, overrides: fitted.overrides, cost: placementCost(layout, fitted.gpuLayers, fitted.overrides) },
  ];
  const gpus = devices().filter((d) => d.type === 'gpu');
  if (fitted.status === 'fits' && layout.experts > 1 && gpus.length === 1 && fitted.overrides.length > 0) {
    const gpu = gpus[0];
    const budget = typeof options.budgetMiB === 'number' ? options.budgetMiB : options.budgetMiB?.[gpu.name];
    const allowed = Math.min(gpu.free - options.marginMiB * MiB, budget === undefined ? Infinity : planBytes(budget));
    const fits = async (gpuLayers: number, overrides: NativeOverride[] = []) => {
      const rows = await binding().estimateMemory(path, {
        gpuLayers, contextSize: options.contextSize, batchSize: 2048, ubatchSize: 512, ...(overrides.length ? { overrides } : {}),
      });
      return rows[0].model + rows[0].context + rows[0].compute <= allowed;
    };
    const cpuMoe = (n: number): NativeOverride[] => Array.from({ length: n }, (_, layer) => ({ pattern: expertPattern(layer), buffer: 'CPU' }));
    try {
      // The most whole layers that fit: binary search over 0 .. layers + 1 (the output layer is the last).
      let lo = 0;
      let hi = layout.layers + 1;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if (await fits(mid)) lo = mid;
        else hi = mid - 1;
      }
      candidates.push({ family: 'layers', gpuLayers: lo, overrides: [], cost: placementCost(layout, lo, []) });
      // Every layer on the GPU but the experts of the fewest first layers that fit (llama.cpp --n-cpu-moe N):
      // whole layers' experts, where the fit may also split one layer's. Binary search over 1 .. layers.
      lo = 1;
      hi = layout.layers;
      if (await fits(-1, cpuMoe(hi))) {
        while (lo < hi) {
          const mid = Math.floor((lo + hi) / 2);
          if (await fits(-1, cpuMoe(mid))) hi = mid;
          else lo = mid + 1;
        }
        const overrides = cpuMoe(lo);
        candidates.push({ family: 'cpuMoe', gpuLayers: -1, overrides, cost: placementCost(layout, -1, overrides) });
      }
    } catch (error) {
      throw fromNative(error);
    }
  }
  // The fewest bytes read from host memory per generated token; on a tie the fewest in host memory (a prompt's
  // batches stream those to the GPU), then the earlier candidate.
  const best = candidates.reduce((a, b) =>
    b.cost.hostBytesPerToken < a.cost.hostBytesPerToken ||
    (b.cost.hostBytesPerToken === a.cost.hostBytesPerToken && b.cost.hostBytes < a.cost.hostBytes) ? b : a);
  return { ...fitted, gpuLayers: best.gpuLayers, overrides: best.overrides, tensorSplit: best === candidates[0] ? fitted.tensorSplit : [], candidates };
}
