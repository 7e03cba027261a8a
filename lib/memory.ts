// What a context costs in memory: predicted from the model's shape before it is created (the KV-cache guard of
// lib/context-options.ts), and measured from a live one (Context.memory, ParallelContext.memory).
import type { ModelInfo, NativeMemoryRow } from './binding.js';
import { ggmlTypeByName } from './gguf/types.js';

/** Memory llama.cpp allocated, per device, measured from a live context (see {@link Context.memory}). */
export interface DeviceMemoryUse {
  /** The device's name (`CUDA0`, `Metal`, `RPC0[127.0.0.1:50052]`...) or `host` for CPU-side buffers. */
  device: string;
  /** Bytes of the model's weights on this device. */
  model: number;
  /** Bytes of this context's KV cache on this device. */
  context: number;
  /** Bytes of this context's compute buffers on this device. */
  compute: number;
  /** model + context + compute. */
  total: number;
}

/** @internal */
export function memoryUse(raw: NativeMemoryRow[]): DeviceMemoryUse[] {
  return raw.map((d) => ({ ...d, total: d.model + d.context + d.compute }));
}

/** What the KV-cache size depends on: a Model has it (its info and metadata). */
export interface KvShape {
  readonly info: Pick<ModelInfo, 'layers' | 'heads' | 'kvHeads' | 'embeddingSize'>;
  readonly metadata: Readonly<Record<string, string>>;
}

/** Bytes of an f16 KV cache of `contextSize` tokens (llama.cpp's default cache types). */
export function kvCacheBytes(model: KvShape, contextSize: number, typeK = 'f16', typeV = 'f16'): number {
  const { layers, heads, kvHeads, embeddingSize } = model.info;
  const arch = model.metadata['general.architecture'];
  const keyLength = Number(model.metadata[`${arch}.attention.key_length`] ?? embeddingSize / Math.max(1, heads));
  const valueLength = Number(model.metadata[`${arch}.attention.value_length`] ?? keyLength);
  const bytes = (type: string, elements: number) => {
    const t = ggmlTypeByName(type)!;
    return (elements / t.blockSize) * t.typeSize;
  };
  return contextSize * layers * (bytes(typeK, kvHeads * keyLength) + bytes(typeV, kvHeads * valueLength));
}

/** @internal The ggml type id of a KV cache type name (context-options.ts KV_CACHE_TYPES). */
export function kvTypeId(type: string): number {
  return ggmlTypeByName(type)!.id;
}
